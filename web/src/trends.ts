// Insights → Trends: series (an event and its math), a breakdown, the interval, a
// formula over the series and the previous period; a line chart and the same numbers as
// a table, which exports as CSV. One `trends` query draws it (two with compare: the
// query kind has no compare of its own, so the previous period is asked for too).
//
// URL: /insights/trends?project=shop&range=7d&s=total|signed_up&s=unique|page_visit
//      &bd=visit:country&interval=day&formula=A/B*100
import { Project, query } from './api';
import { PALETTE, Line, drawLines } from './chart';
import { h } from './dom';
import { Params, ViewState, apiFilters, apiRange, urlParams } from './state';
import {
  BREAKDOWN_DIMENSIONS,
  Grid,
  View,
  csvButton,
  csvName,
  dimensionName,
  eventLabel,
  eventNames,
  failure,
  filterChips,
  gridTable,
  loading,
  noData,
  periodControls,
  select,
} from './ui';

const MATHS: [string, string][] = [
  ['total', 'Total events'],
  ['unique', 'Unique people'],
  ['dau', 'Daily active people'],
  ['wau', 'Weekly active people (7 days)'],
  ['mau', 'Monthly active people (30 days)'],
  ['sum', 'Sum of a property'],
  ['avg', 'Average of a property'],
  ['min', 'Minimum of a property'],
  ['max', 'Maximum of a property'],
];
const PROPERTY_MATHS = ['sum', 'avg', 'min', 'max'];
const INTERVALS: [string, string][] = [
  ['hour', 'Hour'],
  ['day', 'Day'],
  ['week', 'Week'],
  ['month', 'Month'],
];
const NAMES = 'ABCDEFGHIJ';
const MAX_SERIES = 10;

interface SeriesSpec {
  event: string;
  math: string;
  property: string;
}

/** `math|event` or `sum:amount|purchase`; the event comes last so that it may hold `|`. */
function parseSeries(v: string): SeriesSpec | null {
  const at = v.indexOf('|');
  if (at < 0) return null;
  const spec = v.slice(0, at);
  const event = v.slice(at + 1);
  const colon = spec.indexOf(':');
  const math = colon < 0 ? spec : spec.slice(0, colon);
  if (!MATHS.some(([m]) => m === math) || !event) return null;
  return { event, math, property: colon < 0 ? '' : spec.slice(colon + 1) };
}
const seriesParam = (s: SeriesSpec) =>
  `${s.math}${PROPERTY_MATHS.includes(s.math) && s.property ? `:${s.property}` : ''}|${s.event}`;

interface TrendsParams {
  series: SeriesSpec[];
  breakdown: string;
  interval: string;
  formula: string;
}

function readParams(state: ViewState): TrendsParams {
  const q = urlParams();
  const series = q.getAll('s').flatMap((v) => parseSeries(v) ?? []).slice(0, MAX_SERIES);
  const interval = q.get('interval') ?? '';
  return {
    series: series.length ? series : [{ event: '$any', math: 'total', property: '' }],
    breakdown: q.get('bd') ?? '',
    interval: INTERVALS.some(([i]) => i === interval) ? interval : state.range === 'day' ? 'hour' : 'day',
    formula: q.get('formula') ?? '',
  };
}

function toParams(p: TrendsParams): Params {
  return {
    s: p.series.map(seriesParam),
    bd: p.breakdown || undefined,
    interval: p.interval,
    formula: p.formula || undefined,
  };
}

/** The period of the same number of days just before `[from, to]` (query-echoed
 * date-times; their first 10 characters are the local dates). */
export function previousRange(from: string, to: string): [string, string] {
  const DAY = 86_400_000;
  const f = Date.parse(`${from.slice(0, 10)}T00:00:00Z`);
  const t = Date.parse(`${to.slice(0, 10)}T00:00:00Z`);
  const days = Math.round((t - f) / DAY) + 1;
  const iso = (ms: number) => new Date(ms).toISOString().slice(0, 10);
  return [iso(f - days * DAY), iso(f - DAY)];
}

/** The change in percent, 2 decimals; null from 0 (as the stats query's `change`). */
const change = (now: number | null, before: number | null) =>
  now === null || before === null || before === 0 ? null : Math.round(((now - before) / before) * 10_000) / 100;

interface Row {
  key: string;
  name: string;
  breakdown: string[];
  total: number | null;
  data: (number | null)[];
}

export function trends(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  const p = readParams(state);
  const go = (s: ViewState) => nav(s, toParams(p));
  const set = (changes: Partial<TrendsParams>) => nav(state, toParams({ ...p, ...changes }));
  const cleanups: (() => void)[] = [];
  let alive = true;
  let grid: Grid | null = null;

  // --- the builder ---
  const seriesRows = p.series.map((s, i) => {
    const name = NAMES[i];
    const replace = (changes: Partial<SeriesSpec>) =>
      set({ series: p.series.map((x, j) => (j === i ? { ...x, ...changes } : x)) });
    const event = eventSelect(project, state, `series-${name}-event`, `Series ${name}: event`, s.event, (v) =>
      replace({ event: v }),
    );
    const math = h(
      'select',
      {
        id: `series-${name}-math`,
        'aria-label': `Series ${name}: math`,
        onchange: (e: Event) => replace({ math: (e.target as HTMLSelectElement).value }),
      },
      ...MATHS.map(([m, text]) => h('option', { value: m, selected: m === s.math }, text)),
    );
    const property = PROPERTY_MATHS.includes(s.math)
      ? h('input', {
          id: `series-${name}-property`,
          'aria-label': `Series ${name}: property`,
          placeholder: 'property, e.g. amount',
          value: s.property,
          onchange: (e: Event) => replace({ property: (e.target as HTMLInputElement).value.trim() }),
        })
      : null;
    const remove =
      p.series.length > 1
        ? h(
            'button',
            {
              type: 'button',
              class: 'remove',
              'aria-label': `Remove series ${name}`,
              onclick: () => set({ series: p.series.filter((_, j) => j !== i), formula: '' }),
            },
            '×',
          )
        : null;
    return h(
      'div',
      { class: 'series-row', 'data-series': name },
      h('span', { class: 'series-name', style: `--c: ${PALETTE[i]}` }, name),
      event,
      math,
      property,
      remove,
    );
  });
  const add =
    p.series.length < MAX_SERIES
      ? h(
          'button',
          {
            type: 'button',
            id: 'add-series',
            onclick: () => set({ series: [...p.series, { event: '$any', math: 'total', property: '' }] }),
          },
          '+ Add series',
        )
      : null;
  const formula = h('input', {
    id: 'formula',
    placeholder: 'e.g. A / B * 100',
    value: p.formula,
    onchange: (e: Event) => set({ formula: (e.target as HTMLInputElement).value.trim() }),
  });
  const builder = h(
    'section',
    { class: 'card builder', 'aria-label': 'Trends query' },
    ...seriesRows,
    add,
    h(
      'div',
      { class: 'controls' },
      ...select(
        'breakdown',
        'Breakdown',
        [['', 'None'], ...BREAKDOWN_DIMENSIONS.map((d): [string, string] => [d, dimensionName(d)])],
        p.breakdown,
        (v) => set({ breakdown: v }),
      ),
      ...select('interval', 'Interval', INTERVALS, p.interval, (v) => set({ interval: v })),
      h('label', { for: 'formula' }, 'Formula'),
      formula,
    ),
  );

  const chart = h('div', { class: 'plot', id: 'trends-chart' });
  const table = h('div', { id: 'trends-table-box' });
  const summary = h('p', { class: 'period', id: 'trends-period' });
  const result = h(
    'section',
    { class: 'card', id: 'trends', 'aria-labelledby': 'trends-title' },
    h(
      'div',
      { class: 'card-head' },
      h('h2', { id: 'trends-title' }, 'Trends'),
      summary,
      csvButton('trends-csv', () => csvName('trends', state), () => grid),
    ),
    chart,
    table,
  );
  const el = h(
    'div',
    { class: 'insight trends-page' },
    periodControls(state, go, { compare: true }),
    filterChips(state, go),
    builder,
    result,
  );

  const body = (dateRange: unknown) => ({
    kind: 'trends',
    date_range: dateRange,
    timezone: state.timezone,
    filters: apiFilters(state),
    interval: p.interval,
    series: p.series.map((s) => ({
      event: s.event,
      math: s.math,
      ...(PROPERTY_MATHS.includes(s.math) ? { property: s.property } : {}),
    })),
    breakdown: p.breakdown ? [p.breakdown] : [],
    ...(p.formula ? { formula: p.formula } : {}),
  });

  const load = async () => {
    chart.replaceChildren(loading());
    table.replaceChildren();
    grid = null;
    try {
      const r = await query(project.id, body(apiRange(state)));
      let before: any = null;
      let range: [string, string] | null = null;
      if (state.compare) {
        const [from, to] = r.query.date_range as [string, string];
        range = previousRange(from, to);
        before = await query(project.id, body(range));
      }
      if (!alive) return;
      draw(r, before, range);
    } catch (e) {
      if (!alive) return;
      chart.replaceChildren(failure('the trends', e, load));
    }
  };

  const rowsOf = (r: any): Row[] => {
    const seriesRows = (r.results as any[]).map((x) => {
      const i = NAMES.indexOf(x.series);
      const s = p.series[i];
      const math = MATHS.find(([m]) => m === x.math)?.[1] ?? x.math;
      const prop = s && PROPERTY_MATHS.includes(s.math) ? ` ${s.property}` : '';
      return {
        key: [x.series, ...x.breakdown].join('|'),
        name: `${x.series}: ${eventLabel(x.label)} (${math}${prop})`,
        breakdown: (x.breakdown as unknown[]).map(String),
        total: x.total,
        data: x.data,
      };
    });
    const formulaRows = ((r.formula?.results ?? []) as any[]).map((x) => ({
      key: ['formula', ...x.breakdown].join('|'),
      name: `Formula: ${r.formula.expression}`,
      breakdown: (x.breakdown as unknown[]).map(String),
      total: x.total,
      data: x.data,
    }));
    return [...seriesRows, ...formulaRows];
  };

  const draw = (r: any, before: any, range: [string, string] | null) => {
    const [from, to] = r.query.date_range as [string, string];
    summary.textContent =
      `${from.slice(0, 10)} to ${to.slice(0, 10)}` + (range ? `, against ${range[0]} to ${range[1]}` : '');
    const rows = rowsOf(r);
    const previous = new Map(before ? rowsOf(before).map((x) => [x.key, x]) : []);
    const labels: string[] = r.results[0]?.labels ?? r.formula?.results?.[0]?.labels ?? [];
    const empty = rows.every((x) => x.data.every((v) => !v));
    chart.replaceChildren();
    if (empty && previous.size === 0) {
      chart.append(noData(project, state.timezone));
    } else {
      const lines: Line[] = [];
      rows.forEach((x, i) => {
        const color = PALETTE[i % PALETTE.length];
        const label = x.breakdown.length ? `${x.name} · ${x.breakdown.join(', ')}` : x.name;
        // A formula (often a rate) gets the right-hand axis when series are drawn too.
        const right = x.key.startsWith('formula|') || x.key === 'formula';
        lines.push({ label, data: x.data, color, right });
        const prev = previous.get(x.key);
        if (prev) {
          const data = labels.map((_, j) => prev.data[j] ?? null);
          lines.push({ label: `${label} (previous period)`, data, color, dashed: true, right });
        }
      });
      chart.setAttribute('role', 'img');
      chart.setAttribute('aria-label', `Trends chart: ${rows.length} lines over ${labels.length} buckets; the table below has the numbers`);
      cleanups.push(drawLines(chart, labels, lines));
    }
    const bd = p.breakdown;
    grid = {
      columns: [
        'Series',
        ...(bd ? [dimensionName(bd)] : []),
        'Total',
        ...(before ? ['Previous period', 'Change %'] : []),
        ...labels,
      ],
      rows: rows.map((x) => {
        const prev = previous.get(x.key);
        const prevTotal = before ? (prev?.total ?? 0) : null;
        return [
          x.name,
          ...(bd ? [x.breakdown.join(', ')] : []),
          x.total,
          ...(before ? [prevTotal, change(x.total, prevTotal)] : []),
          ...x.data,
        ];
      }),
      numeric: (c) => c > (bd ? 1 : 0),
      key: (i) => rows[i].key,
    };
    table.replaceChildren(gridTable(grid, 'trends-table', 'Trends: each series per bucket'));
  };

  void load();
  return {
    el,
    destroy() {
      alive = false;
      for (const c of cleanups) c();
    },
  };
}

/** A select of the project's events ("Any event" first); the names arrive after the
 * page is drawn, the current choice is there from the start. */
export function eventSelect(
  project: Project,
  state: ViewState,
  id: string,
  label: string,
  value: string,
  onchange: (v: string) => void,
  opts: { blank?: string } = {},
): HTMLSelectElement {
  const el = h('select', {
    id,
    'aria-label': label,
    onchange: (e: Event) => onchange((e.target as HTMLSelectElement).value),
  });
  const fill = (names: string[]) => {
    const all = [...new Set(['$any', ...names, ...(value ? [value] : [])])];
    el.replaceChildren(
      ...(opts.blank !== undefined ? [h('option', { value: '', selected: !value, disabled: true }, opts.blank)] : []),
      ...all.map((n) => h('option', { value: n, selected: n === value }, eventLabel(n))),
    );
  };
  fill([]);
  eventNames(project.id, state.timezone).then(fill, () => {
    /* the current choice stays; the report says what went wrong */
  });
  return el;
}
