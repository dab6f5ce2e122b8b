// Pieces every page shares: the date range and compare controls, the filter chips, the
// loading / error / empty states, and tables that export as CSV exactly what they show.
import { Answer, ApiError, Project, answers, onAnswer, query } from './api';
import { formatNumber, h } from './dom';
import { CUSTOM, RANGES, ViewState, rangeName } from './state';

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

/** The page an event was on, from the properties SDKs put it in: a path as is, a URL's
 * path, '' when there is none. */
export function pagePath(props: Record<string, unknown>): string {
  const v = props.page_path ?? props.path ?? props.page_url ?? props.url ?? props.$current_url;
  if (typeof v !== 'string') return '';
  try {
    return v.startsWith('/') ? v : new URL(v).pathname;
  } catch {
    return v;
  }
}

export const dimensionName = (d: string) =>
  DIMENSION_NAMES[d] ?? (d.startsWith('event:props:') ? `Property ${d.slice(12)}` : d);

/** A day as YYYY-MM-DD in `timezone`, `daysAgo` days before today. */
export function localDay(timezone: string, daysAgo = 0): string {
  const fmt = (tz: string) => new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' });
  let f: Intl.DateTimeFormat;
  try {
    f = fmt(timezone);
  } catch {
    f = fmt('UTC');
  }
  const today = f.format(new Date());
  return new Date(Date.parse(`${today}T00:00:00Z`) - daysAgo * 86_400_000).toISOString().slice(0, 10);
}

/** The date range select (presets, or a custom range of whole days: From and To, both
 * included, applied with a button) and, where the page can compare, the compare
 * checkbox. */
export function periodControls(
  state: ViewState,
  go: (s: ViewState) => void,
  opts: { compare: boolean },
  ...extra: (Node | null)[]
): HTMLElement {
  const custom = state.range === CUSTOM;
  const from = h('input', { type: 'date', id: 'range-from', value: custom ? state.from : localDay(state.timezone, 6), required: true });
  const to = h('input', { type: 'date', id: 'range-to', value: custom ? state.to : localDay(state.timezone), required: true });
  const problem = h('span', { class: 'error-text', id: 'range-error', role: 'alert' });
  const apply = () => {
    const [f, t] = [from.value, to.value];
    if (!f || !t) problem.textContent = 'Pick both days.';
    else if (f > t) problem.textContent = 'The first day is after the last.';
    else go({ ...state, range: CUSTOM, from: f, to: t });
  };
  const dates = h(
    'span',
    { class: 'custom-range', id: 'custom-range', hidden: !custom },
    h('label', { for: 'range-from' }, 'From'),
    from,
    h('label', { for: 'range-to' }, 'To'),
    to,
    h('button', { type: 'button', id: 'range-apply', onclick: apply }, 'Apply'),
    problem,
  );
  const range = h(
    'select',
    {
      id: 'range',
      onchange: (e: Event) => {
        const v = (e.target as HTMLSelectElement).value;
        // A custom range waits for its days; a preset applies at once.
        if (v === CUSTOM) {
          dates.hidden = false;
          from.focus();
        } else go({ ...state, range: v, from: '', to: '' });
      },
    },
    ...RANGES.map((r) => h('option', { value: r.id, selected: r.id === state.range }, r.label)),
    h('option', { value: CUSTOM, selected: custom }, 'Custom range…'),
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
  return h('div', { class: 'controls' }, h('label', { for: 'range' }, 'Date range'), range, dates, compare, ...extra);
}

/** "Updated 12 s ago": how old the oldest answer on screen is, ticking every second,
 * and a Refresh button that draws the page again with every answer computed afresh.
 * Its age is the cache block's (an answer kept from an earlier computation is as old as
 * that computation), counted on from when it arrived; an answer without a cache block
 * is as old as its response. The title has the details of that answer. */
export function freshness(refresh: () => void): { el: HTMLElement; destroy(): void } {
  const line = h('span', { id: 'freshness' });
  const button = h('button', { type: 'button', id: 'refresh', class: 'refresh', title: 'Compute every number on this page again now', onclick: () => refresh(), hidden: true }, 'Refresh');
  const box = h('p', { class: 'freshness' }, line, ' ', button);
  const el = line;
  const tick = () => {
    button.hidden = answers.size === 0;
    let oldest: Answer | null = null;
    for (const a of answers.values()) if (!oldest || a.at < oldest.at) oldest = a;
    if (!oldest) {
      el.textContent = '';
      delete el.dataset.ageS;
      return;
    }
    const s = Math.max(0, Math.floor((Date.now() - oldest.at) / 1000));
    const c = oldest.cache;
    el.dataset.ageS = String(s);
    el.dataset.computedAt = c?.computed_at ?? '';
    el.dataset.stale = String(Boolean(c?.stale));
    const ago = s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min` : `${Math.floor(s / 3600)} h`;
    el.textContent = `Updated ${ago} ago` + (c?.stale ? ' (newer events are being counted)' : '');
    el.title = c
      ? `The oldest numbers on this page were computed at ${c.computed_at ?? '?'} from the events stored by ${c.data_as_of ?? '?'}` +
        (c.hit ? ', and kept since' : '') +
        (c.stale ? '; newer events have been stored since' : '')
      : 'The oldest numbers on this page arrived then';
  };
  tick();
  const timer = window.setInterval(tick, 1000);
  const off = onAnswer(tick);
  return {
    el: box,
    destroy() {
      window.clearInterval(timer);
      off();
    },
  };
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
  void query(project.id, { metrics: ['events'], date_range: 'all', timezone }, { track: false })
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
  /** Where a cell links to inside the app (a person's page...), or null: not a link. */
  link?: (v: Cell, col: number, row: number) => string | null;
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
                linked(grid.link?.(v, c, r) ?? null, show(v, c, r)),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

const linked = (href: string | null, text: string): Node | string =>
  href ? h('a', { href, 'data-nav': '' }, text) : text;

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
  `tally-${page}-${state.project}-${rangeName(state)}.csv`.replace(/[^A-Za-z0-9._-]/g, '_');

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
  }, { track: false }).then((r) => (r.results as any[]).map((x) => String(x.dimensions[0])));
  names.set(project, { at: Date.now(), names: fresh });
  fresh.catch(() => names.delete(project));
  return fresh;
}
/** Event names per project, kept a minute: every builder asks for them. */
const names = new Map<string, { at: number; names: Promise<string[]> }>();

export const eventLabel = (e: string) => (e === '$any' ? 'Any event' : e);
