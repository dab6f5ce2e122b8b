// Pieces every page shares: the date range and compare controls, the filter chips, the
// loading / error / empty states, and tables that export as CSV exactly what they show.
import { ApiError, Project, query } from './api';
import { formatNumber, h } from './dom';
import { RANGES, ViewState } from './state';

export interface View {
  el: HTMLElement;
  destroy(): void;
}

export const DIMENSION_NAMES: Record<string, string> = {
  'event:page': 'Page',
  'event:name': 'Event',
  'event:hostname': 'Hostname',
  'visit:source': 'Source',
  'visit:referrer': 'Referrer',
  'visit:utm_source': 'UTM source',
  'visit:utm_medium': 'UTM medium',
  'visit:utm_campaign': 'UTM campaign',
  'visit:country': 'Country',
  'visit:device': 'Device',
  'visit:browser': 'Browser',
  'visit:os': 'OS',
};

/** The breakdowns the insight builders offer (any event dimension the reports take). */
export const BREAKDOWN_DIMENSIONS = [
  'event:page',
  'event:hostname',
  'visit:source',
  'visit:referrer',
  'visit:utm_source',
  'visit:utm_medium',
  'visit:utm_campaign',
  'visit:country',
  'visit:device',
  'visit:browser',
  'visit:os',
];

export const dimensionName = (d: string) =>
  DIMENSION_NAMES[d] ?? (d.startsWith('event:props:') ? `Property ${d.slice(12)}` : d);

/** The date range select and, where the page can compare, the compare checkbox. */
export function periodControls(
  state: ViewState,
  go: (s: ViewState) => void,
  opts: { compare: boolean },
  ...extra: (Node | null)[]
): HTMLElement {
  const range = h(
    'select',
    { id: 'range', onchange: (e: Event) => go({ ...state, range: (e.target as HTMLSelectElement).value }) },
    ...RANGES.map((r) => h('option', { value: r.id, selected: r.id === state.range }, r.label)),
  );
  const compare = opts.compare
    ? h(
        'label',
        { class: 'check' },
        h('input', {
          type: 'checkbox',
          id: 'compare',
          checked: state.compare,
          onchange: (e: Event) => go({ ...state, compare: (e.target as HTMLInputElement).checked }),
        }),
        ' Compare with previous period',
      )
    : null;
  return h('div', { class: 'controls' }, h('label', { for: 'range' }, 'Date range'), range, compare, ...extra);
}

/** The page-wide filters as chips, each with a button that takes it off. */
export function filterChips(state: ViewState, go: (s: ViewState) => void): HTMLElement {
  return h(
    'div',
    { class: 'filters', id: 'filters' },
    ...state.filters.map((f, i) => {
      const text = `${dimensionName(f.dimension)} is ${f.value}`;
      return h(
        'span',
        { class: 'chip' },
        text,
        h(
          'button',
          {
            type: 'button',
            class: 'chip-remove',
            'aria-label': `Remove filter ${text}`,
            onclick: () => go({ ...state, filters: state.filters.filter((_, j) => j !== i) }),
          },
          '×',
        ),
      );
    }),
  );
}

export const loading = () => h('p', { class: 'loading-text', 'aria-busy': 'true' }, 'Loading…');

export function failure(what: string, e: unknown, retry: () => void): HTMLElement {
  const message = e instanceof ApiError ? e.message : String(e);
  return h(
    'div',
    { class: 'error', role: 'alert' },
    h('p', {}, `Could not load ${what}: ${message}`),
    h('button', { type: 'button', onclick: () => retry() }, 'Retry'),
  );
}

/** "No data in this period", and, for a project that has never had an event, how to
 * send the first one. */
export function noData(project: Project, timezone: string): HTMLElement {
  const box = h('div', { class: 'no-data' }, h('p', { class: 'empty' }, 'No data in this period.'));
  void query(project.id, { metrics: ['events'], date_range: 'all', timezone })
    .then((r) => {
      if (Number(r.results[0].metrics[0]) === 0) box.append(emptyState(project));
    })
    .catch(() => {
      /* the message above stands on its own */
    });
  return box;
}

export function emptyState(project: Project): HTMLElement {
  const origin = location.origin;
  const key = project.write_key ?? 'WRITE_KEY';
  const snippet = `<script src="${origin}/js/tally.js" data-api-key="${key}" defer></script>`;
  const curl =
    `curl -s ${origin}/api/track -H 'x-api-key: ${key}' -H 'content-type: application/json' ` +
    `-d '[{"event_name":"page_visit","user_id":"","context":{"device_id":"d1"},"properties":{"page_url":"https://example.com/"}}]'`;
  return h(
    'section',
    { class: 'card empty-state', 'aria-labelledby': 'empty-title' },
    h('h2', { id: 'empty-title' }, `No events yet in ${project.name}`),
    h('p', {}, 'Add the tracker to your site, before </body>:'),
    h('pre', {}, h('code', { id: 'snippet' }, snippet)),
    h('p', {}, 'Or send a first event from a terminal:'),
    h('pre', {}, h('code', { id: 'curl' }, curl)),
    project.write_key
      ? null
      : h('p', {}, 'Ask an admin for the project’s write key (`tally keys list`) and put it in place of WRITE_KEY.'),
    h('p', {}, 'This page fills in as events arrive. See docs/ingest.md for the SDKs Tally takes.'),
  );
}

// --- tables and CSV -------------------------------------------------------------------

export type Cell = string | number | null;

/** A table as data: what is drawn and what the CSV holds come from the same rows. */
export interface Grid {
  columns: string[];
  rows: Cell[][];
  /** Columns drawn as numbers (right-aligned, formatted). */
  numeric?: (col: number) => boolean;
  /** How a cell is shown; default: numbers formatted, null as "–". */
  show?: (v: Cell, col: number, row: number) => string;
  /** A key per row, on <tr data-key>. */
  key?: (row: number) => string;
}

export function gridTable(grid: Grid, id: string, caption: string): HTMLElement {
  const numeric = grid.numeric ?? ((c: number) => c > 0);
  const show = grid.show ?? ((v: Cell) => (v === null ? '–' : typeof v === 'number' ? formatNumber(v) : v));
  return h(
    'div',
    { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': caption },
    h(
      'table',
      { id },
      h('caption', { class: 'visually-hidden' }, caption),
      h(
        'thead',
        {},
        h('tr', {}, ...grid.columns.map((c, i) => h('th', { scope: 'col', class: numeric(i) ? 'num' : undefined }, c))),
      ),
      h(
        'tbody',
        {},
        ...grid.rows.map((row, r) =>
          h(
            'tr',
            { 'data-key': grid.key?.(r) },
            ...row.map((v, c) =>
              h(
                c === 0 ? 'th' : 'td',
                {
                  scope: c === 0 ? 'row' : undefined,
                  class: numeric(c) ? 'num' : undefined,
                  'data-value': v === null ? 'null' : String(v),
                },
                show(v, c, r),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

/** RFC 4180: fields with a comma, quote or line break are quoted, lines end in CRLF. A
 * text cell that a spreadsheet would run as a formula (=, +, -, @) gets a leading
 * apostrophe: event names and pages come from the tracked sites. */
export function toCsv(grid: Grid): string {
  const field = (v: Cell) => {
    if (v === null) return '';
    let s = String(v);
    if (typeof v === 'string' && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [grid.columns, ...grid.rows].map((r) => r.map(field).join(',')).join('\r\n') + '\r\n';
}

export function csvButton(id: string, filename: () => string, grid: () => Grid | null): HTMLElement {
  return h(
    'button',
    {
      type: 'button',
      id,
      class: 'csv',
      onclick: () => {
        const g = grid();
        if (!g) return;
        const url = URL.createObjectURL(new Blob([toCsv(g)], { type: 'text/csv;charset=utf-8' }));
        const a = h('a', { href: url, download: filename() });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10_000);
      },
    },
    'Export CSV',
  );
}

/** A file name for an export: tally-<page>-<project>-<range>.csv. */
export const csvName = (page: string, state: ViewState) =>
  `tally-${page}-${state.project}-${state.range}.csv`.replace(/[^A-Za-z0-9._-]/g, '_');

/** A labelled select. */
export function select(
  id: string,
  label: string,
  options: [string, string][],
  value: string,
  onchange: (v: string) => void,
): HTMLElement[] {
  return [
    h('label', { for: id }, label),
    h(
      'select',
      { id, onchange: (e: Event) => onchange((e.target as HTMLSelectElement).value) },
      ...options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)),
    ),
  ];
}

/** The project's event names (most used first), for the builders' pickers. */
export function eventNames(project: string, timezone: string): Promise<string[]> {
  const cached = names.get(project);
  if (cached && Date.now() - cached.at < 60_000) return cached.names;
  const fresh = query(project, {
    metrics: ['events'],
    dimensions: ['event:name'],
    date_range: 'all',
    timezone,
    pagination: { limit: 200, offset: 0 },
  }).then((r) => (r.results as any[]).map((x) => String(x.dimensions[0])));
  names.set(project, { at: Date.now(), names: fresh });
  fresh.catch(() => names.delete(project));
  return fresh;
}
/** Event names per project, kept a minute: every builder asks for them. */
const names = new Map<string, { at: number; names: Promise<string[]> }>();

export const eventLabel = (e: string) => (e === '$any' ? 'Any event' : e);
