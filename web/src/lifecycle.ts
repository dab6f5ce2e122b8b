// Insights → Lifecycle: per interval, the active people split into new, returning and
// resurrecting, and the ones who went dormant below the axis; stacked bars (plain
// elements: a bar is a few boxes, no chart library needed) and the table, with CSV.
// Insights → Stickiness: how many people were active on 1, 2, 3... of the range's
// intervals. One query each.
//
// URL: /insights/lifecycle?project=shop&range=28d&target=$any&interval=day
//      /insights/stickiness?project=shop&range=28d&target=$any&interval=day
import { Project, query } from './api';
import { formatNumber, h } from './dom';
import { Params, ViewState, apiRange, apiFilters, urlParams } from './state';
import { eventSelect } from './trends';
import {
  Grid,
  View,
  csvButton,
  csvName,
  failure,
  filterChips,
  gridTable,
  loading,
  noData,
  periodControls,
  select,
} from './ui';

const INTERVALS: [string, string][] = [
  ['hour', 'Hour'],
  ['day', 'Day'],
  ['week', 'Week'],
  ['month', 'Month'],
];

interface ActivityParams {
  target: string;
  interval: string;
}

function readParams(state: ViewState): ActivityParams {
  const q = urlParams();
  const interval = q.get('interval') ?? '';
  return {
    target: q.get('target') || '$any',
    interval: INTERVALS.some(([i]) => i === interval) ? interval : state.range === 'day' ? 'hour' : 'day',
  };
}
const toParams = (p: ActivityParams): Params => ({ target: p.target, interval: p.interval });

/** What both pages share: the target and interval pickers and a result card. */
function activityPage(
  kind: 'lifecycle' | 'stickiness',
  title: string,
  project: Project,
  state: ViewState,
  nav: (s: ViewState, p: Params) => void,
  draw: (r: any, box: HTMLElement, summary: HTMLElement) => Grid | null,
): View {
  const p = readParams(state);
  const go = (s: ViewState) => nav(s, toParams(p));
  const set = (changes: Partial<ActivityParams>) => nav(state, toParams({ ...p, ...changes }));
  let alive = true;
  let grid: Grid | null = null;
  const builder = h(
    'section',
    { class: 'card builder', 'aria-label': `${title} query` },
    h(
      'div',
      { class: 'controls' },
      h('label', { for: 'target' }, 'Active means doing'),
      eventSelect(project, state, 'target', 'Activity event', p.target, (v) => set({ target: v })),
      ...select('interval', 'Interval', INTERVALS, p.interval, (v) => set({ interval: v })),
    ),
  );
  const box = h('div', { id: `${kind}-box` });
  const summary = h('p', { class: 'period', id: `${kind}-summary` });
  const el = h(
    'div',
    { class: `insight ${kind}-page` },
    periodControls(state, go, { compare: false }),
    filterChips(state, go),
    builder,
    h(
      'section',
      { class: 'card', id: kind, 'aria-labelledby': `${kind}-title` },
      h(
        'div',
        { class: 'card-head' },
        h('h2', { id: `${kind}-title` }, title),
        summary,
        csvButton(`${kind}-csv`, () => csvName(kind, state), () => grid),
      ),
      box,
    ),
  );
  const load = async () => {
    grid = null;
    box.replaceChildren(loading());
    try {
      const r = await query(project.id, {
        kind,
        date_range: apiRange(state),
        timezone: state.timezone,
        filters: apiFilters(state),
        interval: p.interval,
        target: { event: p.target },
      });
      if (!alive) return;
      const [from, to] = r.query.date_range as [string, string];
      summary.textContent = `${from.slice(0, 10)} to ${to.slice(0, 10)}`;
      grid = draw(r, box, summary);
    } catch (e) {
      if (alive) box.replaceChildren(failure(`the ${kind}`, e, load));
    }
  };
  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}

const KINDS = [
  ['new', 'New', '#4338ca'],
  ['returning', 'Returning', '#047857'],
  ['resurrecting', 'Resurrecting', '#b45309'],
  ['dormant', 'Dormant', '#b91c1c'],
] as const;

export function lifecycle(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  return activityPage('lifecycle', 'Lifecycle', project, state, nav, (r, box, summary) => {
    const res = r.results;
    const labels = res.labels as string[];
    const at = (k: string, i: number) => Number(res[k][i] ?? 0);
    const active = labels.map((_, i) => at('new', i) + at('returning', i) + at('resurrecting', i));
    const grid: Grid = {
      columns: ['Interval', ...KINDS.map(([, name]) => name), 'Active'],
      rows: labels.map((l, i) => [l, ...KINDS.map(([k]) => at(k, i)), active[i]]),
      key: (i) => labels[i],
    };
    summary.textContent += `: ${formatNumber(active.reduce((a, b) => a + b, 0))} active people-intervals`;
    if (grid.rows.every((row) => row.slice(1).every((v) => v === 0))) {
      box.replaceChildren(noData(project, state.timezone));
      return null;
    }
    const up = Math.max(1, ...active);
    const down = Math.max(0, ...labels.map((_, i) => -at('dormant', i)));
    const scale = 180 / (up + down);
    const bars = h(
      'div',
      {
        class: 'stack-chart',
        role: 'img',
        'aria-label': `Lifecycle per ${labels.length} intervals: new, returning and resurrecting above the line, dormant below; the table below has the numbers`,
        style: `--up: ${Math.round(up * scale)}px; --down: ${Math.round(down * scale)}px`,
      },
      ...labels.map((l, i) =>
        h(
          'div',
          { class: 'stack', title: `${l}: ${KINDS.map(([k, name]) => `${name} ${at(k, i)}`).join(', ')}` },
          h(
            'div',
            { class: 'stack-up' },
            ...KINDS.filter(([k]) => k !== 'dormant').map(([k, , color]) =>
              h('div', { style: `height: ${at(k, i) * scale}px; background: ${color}` }),
            ),
          ),
          h('div', { class: 'stack-down' }, h('div', { style: `height: ${-at('dormant', i) * scale}px; background: #b91c1c` })),
        ),
      ),
    );
    const legend = h(
      'p',
      { class: 'legend' },
      ...KINDS.map(([, name, color]) => h('span', {}, h('span', { class: 'swatch', style: `background: ${color}` }), name)),
    );
    box.replaceChildren(bars, legend, gridTable(grid, 'lifecycle-table', 'Lifecycle: people per interval'));
    return grid;
  });
}

export function stickiness(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  return activityPage('stickiness', 'Stickiness', project, state, nav, (r, box, summary) => {
    const rows = r.results as any[];
    const unit = INTERVALS.find(([i]) => i === r.query.interval)?.[1].toLowerCase() ?? 'interval';
    summary.textContent += `: ${formatNumber(r.total)} active people, ${r.periods} ${unit}s`;
    if (Number(r.total) === 0) {
      box.replaceChildren(noData(project, state.timezone));
      return null;
    }
    const grid: Grid = {
      columns: [`Active ${unit}s`, 'People', '%'],
      rows: rows.map((x) => [x.intervals, x.count, x.percentage]),
      numeric: () => true,
      key: (i) => String(rows[i].intervals),
    };
    const max = Math.max(1, ...rows.map((x) => Number(x.percentage)));
    box.replaceChildren(
      h(
        'ol',
        { class: 'hbars', 'aria-label': 'People by number of active intervals' },
        ...rows.map((x) =>
          h(
            'li',
            {},
            h('span', { class: 'hbar-label' }, `${x.intervals} ${x.intervals === 1 ? unit : `${unit}s`}`),
            h('span', { class: 'hbar-track' }, h('span', { class: 'hbar-fill', style: `width: ${(Number(x.percentage) / max) * 100}%` })),
            h('span', { class: 'hbar-value' }, `${formatNumber(x.count)} · ${x.percentage}%`),
          ),
        ),
      ),
      gridTable(grid, 'stickiness-table', 'Stickiness: people by number of active intervals'),
    );
    return grid;
  });
}
