// Insights → Retention: cohorts by the period of their target event (first-time: the
// first one ever; recurring: every period they did it), and how many came back 1, 2, 3...
// periods later, as a grid shaded by the share; CSV export with each cell's people and
// percentage. One `retention` query.
//
// URL: /insights/retention?project=shop&range=28d&target=signed_up&ret=$any
//      &period=week&type=first_time&intervals=8
import { Project, query } from './api';
import { formatNumber, h } from './dom';
import { Params, ViewState, apiRange, apiFilters, urlParams } from './state';
import { eventSelect } from './trends';
import {
  Cell,
  Grid,
  View,
  csvButton,
  csvName,
  failure,
  filterChips,
  loading,
  noData,
  periodControls,
  select,
} from './ui';

const PERIODS: [string, string][] = [
  ['hour', 'Hour'],
  ['day', 'Day'],
  ['week', 'Week'],
  ['month', 'Month'],
];
const TYPES: [string, string][] = [
  ['first_time', 'for the first time'],
  ['recurring', 'in that period (recurring)'],
];

interface RetentionParams {
  target: string;
  returning: string;
  period: string;
  type: string;
  intervals: number;
}

function readParams(): RetentionParams {
  const q = urlParams();
  const period = q.get('period') ?? '';
  const type = q.get('type') ?? '';
  const intervals = Math.round(Number(q.get('intervals') ?? 8));
  return {
    target: q.get('target') || '$any',
    returning: q.get('ret') || '$any',
    period: PERIODS.some(([x]) => x === period) ? period : 'week',
    type: TYPES.some(([x]) => x === type) ? type : 'first_time',
    intervals: intervals >= 1 && intervals <= 100 ? intervals : 8,
  };
}

const toParams = (p: RetentionParams): Params => ({
  target: p.target,
  ret: p.returning,
  period: p.period,
  type: p.type,
  intervals: String(p.intervals),
});

export function retention(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  const p = readParams();
  const go = (s: ViewState) => nav(s, toParams(p));
  const set = (changes: Partial<RetentionParams>) => nav(state, toParams({ ...p, ...changes }));
  let alive = true;
  let grid: Grid | null = null;
  const periodName = PERIODS.find(([x]) => x === p.period)![1];

  const builder = h(
    'section',
    { class: 'card builder', 'aria-label': 'Retention query' },
    h(
      'div',
      { class: 'controls' },
      h('label', { for: 'target' }, 'Cohorts of people who did'),
      eventSelect(project, state, 'target', 'Cohort event', p.target, (v) => set({ target: v })),
      h(
        'select',
        { id: 'type', 'aria-label': 'Cohort type', onchange: (e: Event) => set({ type: (e.target as HTMLSelectElement).value }) },
        ...TYPES.map(([v, text]) => h('option', { value: v, selected: v === p.type }, text)),
      ),
      h('label', { for: 'returning' }, 'and came back to do'),
      eventSelect(project, state, 'returning', 'Returning event', p.returning, (v) => set({ returning: v })),
    ),
    h(
      'div',
      { class: 'controls' },
      ...select('period', 'Period', PERIODS, p.period, (v) => set({ period: v })),
      h('label', { for: 'intervals' }, 'Periods per cohort'),
      h('input', {
        id: 'intervals',
        type: 'number',
        min: 1,
        max: 100,
        value: String(p.intervals),
        onchange: (e: Event) =>
          set({ intervals: Math.max(1, Math.min(100, Math.round(Number((e.target as HTMLInputElement).value) || 8))) }),
      }),
    ),
  );

  const box = h('div', { id: 'retention-box' });
  const summary = h('p', { class: 'period', id: 'retention-summary' });
  const result = h(
    'section',
    { class: 'card', id: 'retention', 'aria-labelledby': 'retention-title' },
    h(
      'div',
      { class: 'card-head' },
      h('h2', { id: 'retention-title' }, 'Retention'),
      summary,
      csvButton('retention-csv', () => csvName('retention', state), () => grid),
    ),
    box,
  );
  const el = h(
    'div',
    { class: 'insight retention-page' },
    periodControls(state, go, { compare: false }),
    filterChips(state, go),
    builder,
    result,
  );

  const load = async () => {
    grid = null;
    box.replaceChildren(loading());
    try {
      const r = await query(project.id, {
        kind: 'retention',
        date_range: apiRange(state),
        timezone: state.timezone,
        filters: apiFilters(state),
        period: p.period,
        intervals: p.intervals,
        type: p.type,
        target: { event: p.target },
        returning: { event: p.returning },
      });
      if (!alive) return;
      draw(r);
    } catch (e) {
      if (!alive) return;
      box.replaceChildren(failure('the retention', e, load));
    }
  };

  const draw = (r: any) => {
    const [from, to] = r.query.date_range as [string, string];
    const cohorts = r.results as any[];
    const people = cohorts.reduce((n, c) => n + Number(c.size), 0);
    summary.textContent = `${from.slice(0, 10)} to ${to.slice(0, 10)}: ${formatNumber(people)} people in ${cohorts.length} cohorts`;
    if (people === 0) {
      box.replaceChildren(noData(project, state.timezone));
      return;
    }
    const n = Math.max(0, ...cohorts.map((c) => c.values.length));
    const idx = [...Array(n).keys()];
    const rows: Cell[][] = cohorts.map((c) => [
      c.cohort,
      c.size,
      ...idx.flatMap((i) => {
        const v = c.values[i];
        return v ? [v.count, v.percentage] : [null, null];
      }),
    ]);
    grid = {
      columns: ['Cohort', 'People', ...idx.flatMap((i) => [`${periodName} ${i}`, `${periodName} ${i} %`])],
      rows,
    };
    box.replaceChildren(
      h(
        'div',
        { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': 'Retention grid' },
        h(
          'table',
          { id: 'retention-table', class: 'retention' },
          h('caption', { class: 'visually-hidden' }, `Retention by ${periodName.toLowerCase()}: the share of each cohort that came back`),
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              h('th', { scope: 'col' }, 'Cohort'),
              h('th', { scope: 'col', class: 'num' }, 'People'),
              ...idx.map((i) => h('th', { scope: 'col', class: 'num' }, `${periodName} ${i}`)),
            ),
          ),
          h(
            'tbody',
            {},
            ...cohorts.map((c) =>
              h(
                'tr',
                { 'data-key': c.cohort, 'data-size': String(c.size) },
                h('th', { scope: 'row' }, c.cohort),
                h('td', { class: 'num' }, formatNumber(c.size)),
                ...idx.map((i) => {
                  const v = c.values[i];
                  if (!v) return h('td', { class: 'num future', 'aria-label': 'not begun yet' }, '');
                  return h(
                    'td',
                    {
                      class: 'num cell',
                      'data-count': String(v.count),
                      'data-pct': String(v.percentage),
                      style: `--share: ${Math.round(v.percentage) / 100}`,
                      title: `${v.count} of ${c.size} people`,
                    },
                    `${v.percentage}%`,
                    h('span', { class: 'count' }, formatNumber(v.count)),
                  );
                }),
              ),
            ),
          ),
        ),
      ),
    );
  };

  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}
