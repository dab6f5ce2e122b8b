// Insights → Funnel: 2–20 steps, the conversion window, the order and an optional
// breakdown; a bar per step (how many reached it, the share of the first step, the
// drop-off from the previous one and the median time it took) and a table with every
// breakdown value, which exports as CSV. One `funnel` query.
//
// URL: /insights/funnel?project=shop&range=28d&step=page_visit&step=signed_up
//      &window=14d&order=ordered&bd=visit:country
import { Project, query } from './api';
import { formatDuration, formatNumber, h } from './dom';
import { Params, ViewState, apiRange, apiFilters, urlParams } from './state';
import { eventSelect } from './trends';
import {
  BREAKDOWN_DIMENSIONS,
  Cell,
  Grid,
  View,
  csvButton,
  csvName,
  dimensionName,
  eventLabel,
  failure,
  filterChips,
  gridTable,
  loading,
  noData,
  periodControls,
  select,
} from './ui';

const UNITS: Record<string, string> = { s: 'second', m: 'minute', h: 'hour', d: 'day', w: 'week' };
const UNIT_NAMES: [string, string][] = [
  ['m', 'minutes'],
  ['h', 'hours'],
  ['d', 'days'],
  ['w', 'weeks'],
];
const ORDERS: [string, string][] = [
  ['ordered', 'In order'],
  ['strict', 'Strictly in a row'],
  ['unordered', 'In any order'],
];
const MAX_STEPS = 20;

interface FunnelParams {
  steps: string[];
  windowValue: number;
  windowUnit: string;
  order: string;
  breakdown: string;
}

function readParams(): FunnelParams {
  const q = urlParams();
  const w = /^(\d{1,6})([smhdw])$/.exec(q.get('window') ?? '');
  const order = q.get('order') ?? '';
  return {
    steps: q.getAll('step').slice(0, MAX_STEPS),
    windowValue: w ? Math.max(1, Number(w[1])) : 14,
    windowUnit: w ? w[2] : 'd',
    order: ORDERS.some(([o]) => o === order) ? order : 'ordered',
    breakdown: q.get('bd') ?? '',
  };
}

const toParams = (p: FunnelParams): Params => ({
  step: p.steps,
  window: `${p.windowValue}${p.windowUnit}`,
  order: p.order,
  bd: p.breakdown || undefined,
});

export function funnel(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  const p = readParams();
  const go = (s: ViewState) => nav(s, toParams(p));
  const set = (changes: Partial<FunnelParams>) => nav(state, toParams({ ...p, ...changes }));
  let alive = true;
  let grid: Grid | null = null;

  // --- the builder: the steps so far and one more to pick ---
  const shown = p.steps.length >= 2 ? p.steps : [...p.steps, ...Array(2 - p.steps.length).fill('')];
  const stepRows = shown.map((step, i) =>
    h(
      'li',
      { class: 'step-row', 'data-step': String(i) },
      h('span', { class: 'step-number', 'aria-hidden': 'true' }, `${i + 1}.`),
      eventSelect(
        project,
        state,
        `step-${i}`,
        `Step ${i + 1}`,
        step,
        (v) => {
          const steps = [...shown];
          steps[i] = v;
          set({ steps: steps.filter((s) => s !== '') });
        },
        { blank: 'Choose an event' },
      ),
      shown.length > 2
        ? h(
            'button',
            {
              type: 'button',
              class: 'remove',
              'aria-label': `Remove step ${i + 1}`,
              onclick: () => set({ steps: p.steps.filter((_, j) => j !== i) }),
            },
            '×',
          )
        : null,
    ),
  );
  const add =
    p.steps.length >= 2 && p.steps.length < MAX_STEPS
      ? h('button', { type: 'button', id: 'add-step', onclick: () => set({ steps: [...p.steps, '$any'] }) }, '+ Add step')
      : null;
  const windowValue = h('input', {
    id: 'window-value',
    type: 'number',
    min: 1,
    max: 100000,
    value: String(p.windowValue),
    'aria-label': 'Conversion window',
    onchange: (e: Event) => set({ windowValue: Math.max(1, Math.round(Number((e.target as HTMLInputElement).value) || 1)) }),
  });
  const builder = h(
    'section',
    { class: 'card builder', 'aria-label': 'Funnel query' },
    h('ol', { class: 'steps' }, ...stepRows),
    add,
    h(
      'div',
      { class: 'controls' },
      h('label', { for: 'window-value' }, 'Converted within'),
      windowValue,
      h(
        'select',
        {
          id: 'window-unit',
          'aria-label': 'Conversion window unit',
          onchange: (e: Event) => set({ windowUnit: (e.target as HTMLSelectElement).value }),
        },
        ...UNIT_NAMES.map(([u, text]) => h('option', { value: u, selected: u === p.windowUnit }, text)),
      ),
      ...select('order', 'Steps', ORDERS, p.order, (v) => set({ order: v })),
      ...select(
        'breakdown',
        'Breakdown',
        [['', 'None'], ...BREAKDOWN_DIMENSIONS.map((d): [string, string] => [d, dimensionName(d)])],
        p.breakdown,
        (v) => set({ breakdown: v }),
      ),
    ),
  );

  const bars = h('div', { id: 'funnel-bars' });
  const table = h('div', { id: 'funnel-table-box' });
  const summary = h('p', { class: 'period', id: 'funnel-summary' });
  const result = h(
    'section',
    { class: 'card', id: 'funnel', 'aria-labelledby': 'funnel-title' },
    h(
      'div',
      { class: 'card-head' },
      h('h2', { id: 'funnel-title' }, 'Funnel'),
      summary,
      csvButton('funnel-csv', () => csvName('funnel', state), () => grid),
    ),
    bars,
    table,
  );
  const el = h(
    'div',
    { class: 'insight funnel-page' },
    periodControls(state, go, { compare: false }),
    filterChips(state, go),
    builder,
    result,
  );

  const load = async () => {
    grid = null;
    table.replaceChildren();
    if (p.steps.length < 2) {
      bars.replaceChildren(h('p', { class: 'empty', id: 'funnel-hint' }, 'Choose at least two steps.'));
      return;
    }
    bars.replaceChildren(loading());
    try {
      const r = await query(project.id, {
        kind: 'funnel',
        date_range: apiRange(state),
        timezone: state.timezone,
        filters: apiFilters(state),
        steps: p.steps.map((event) => ({ event })),
        order: p.order,
        window: { value: p.windowValue, unit: UNITS[p.windowUnit] },
        ...(p.breakdown ? { breakdown: p.breakdown } : {}),
      });
      if (!alive) return;
      draw(r);
    } catch (e) {
      if (!alive) return;
      bars.replaceChildren(failure('the funnel', e, load));
    }
  };

  const draw = (r: any) => {
    const [from, to] = r.query.date_range as [string, string];
    const all = r.results[0];
    const steps = all.steps as any[];
    const last = steps[steps.length - 1];
    summary.textContent =
      `${from.slice(0, 10)} to ${to.slice(0, 10)}: ${formatNumber(last.count)} of ${formatNumber(steps[0].count)} ` +
      `converted (${last.conversion_rate}%)`;
    if (steps[0].count === 0) {
      bars.replaceChildren(noData(project, state.timezone));
    } else {
      bars.replaceChildren(
        h(
          'ol',
          { class: 'funnel-bars', 'aria-label': 'Funnel steps' },
          ...steps.map((s, i) =>
            h(
              'li',
              { class: 'funnel-step', 'data-step': String(i), 'data-count': String(s.count), 'data-conversion': String(s.conversion_rate) },
              h(
                'div',
                { class: 'funnel-label' },
                h('strong', {}, `${i + 1}. ${eventLabel(s.event)}`),
                h('span', {}, `${formatNumber(s.count)} ${s.count === 1 ? 'person' : 'people'} · ${s.conversion_rate}%`),
              ),
              h(
                'div',
                { class: 'funnel-track' },
                h('div', { class: 'funnel-fill', style: `width: ${Math.max(0, Math.min(100, s.conversion_rate))}%` }),
              ),
              i === 0
                ? null
                : h(
                    'p',
                    { class: 'funnel-drop' },
                    `${s.step_conversion_rate}% of step ${i}; ${formatNumber(s.dropped)} dropped off` +
                      (s.median_time_to_convert_s === null ? '' : `; median time ${formatDuration(s.median_time_to_convert_s)}`),
                  ),
            ),
          ),
        ),
      );
    }
    const bd = p.breakdown;
    const rows: Cell[][] = [];
    const keys: string[] = [];
    for (const group of r.results as any[]) {
      const value = group.breakdown === null ? 'All' : String(group.breakdown);
      for (const s of group.steps as any[]) {
        keys.push(`${value}|${s.step}`);
        rows.push([
          s.step + 1,
          s.event,
          ...(bd ? [value] : []),
          s.count,
          s.conversion_rate,
          s.step_conversion_rate,
          s.dropped,
          s.median_time_to_convert_s,
          s.avg_time_to_convert_s,
        ]);
      }
    }
    const textCols = bd ? [1, 2] : [1];
    const timeCols = bd ? [7, 8] : [6, 7];
    grid = {
      columns: [
        'Step',
        'Event',
        ...(bd ? [dimensionName(bd)] : []),
        'People',
        'Conversion %',
        'From previous step %',
        'Dropped',
        'Median time to convert (s)',
        'Average time to convert (s)',
      ],
      rows,
      numeric: (c) => !textCols.includes(c),
      show: (v, c) =>
        v === null ? '–' : c === 1 ? eventLabel(String(v)) : timeCols.includes(c) ? formatDuration(Number(v)) : typeof v === 'number' ? formatNumber(v) : v,
      key: (i) => keys[i],
    };
    table.replaceChildren(gridTable(grid, 'funnel-table', 'Funnel: each step, per breakdown value'));
  };

  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}
