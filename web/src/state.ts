// The view's state lives in the URL, so a link reproduces what is on screen:
//   /?project=shop&range=7d&compare=0&f=visit:source|Google&f=event:page|/pricing
// The part every page shares is a ViewState; each page adds its own parameters
// (`Params`), e.g. /insights/trends?...&s=signed_up|total&interval=week.

export const RANGES: { id: string; label: string }[] = [
  { id: 'day', label: 'Today' },
  { id: '7d', label: 'Last 7 days' },
  { id: '28d', label: 'Last 28 days' },
  { id: '91d', label: 'Last 91 days' },
  { id: 'month', label: 'Month to date' },
  { id: 'year', label: 'Year to date' },
];

/** `range=custom&from=2026-11-01&to=2026-11-07`: whole days, both included. */
export const CUSTOM = 'custom';
const DATE = /^\d{4}-\d{2}-\d{2}$/;
const isDate = (v: string | null): v is string => v !== null && DATE.test(v) && !Number.isNaN(Date.parse(`${v}T00:00:00Z`));

export interface Filter {
  dimension: string;
  value: string;
}

export interface ViewState {
  project: string;
  /** A preset's id, or CUSTOM with `from` and `to`. */
  range: string;
  /** The custom range's first and last day (YYYY-MM-DD); '' with a preset. */
  from: string;
  to: string;
  compare: boolean;
  filters: Filter[];
  /** IANA zone the dates are read in: ?tz=, else the browser's. */
  timezone: string;
}

export function readState(): ViewState {
  const q = new URLSearchParams(location.search);
  let range = q.get('range') ?? '28d';
  let from = q.get('from');
  let to = q.get('to');
  if (range === CUSTOM && isDate(from) && isDate(to)) {
    if (from > to) [from, to] = [to, from];
  } else {
    if (range === CUSTOM) range = '28d';
    from = to = '';
  }
  const filters: Filter[] = q.getAll('f').flatMap((f) => {
    const at = f.indexOf('|');
    return at > 0 ? [{ dimension: f.slice(0, at), value: f.slice(at + 1) }] : [];
  });
  return {
    project: q.get('project') ?? '',
    range: range === CUSTOM || RANGES.some((r) => r.id === range) ? range : '28d',
    from: from ?? '',
    to: to ?? '',
    compare: q.get('compare') !== '0',
    filters,
    timezone: q.get('tz') || Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC',
  };
}

export function stateUrl(s: ViewState, path = '/'): string {
  const q = new URLSearchParams();
  if (s.project) q.set('project', s.project);
  q.set('range', s.range);
  if (s.range === CUSTOM) {
    q.set('from', s.from);
    q.set('to', s.to);
  }
  if (!s.compare) q.set('compare', '0');
  for (const f of s.filters) q.append('f', `${f.dimension}|${f.value}`);
  const tz = new URLSearchParams(location.search).get('tz');
  if (tz) q.set('tz', tz);
  return `${path}?${q.toString()}`;
}

/** The date range as the query API takes it: a preset, or [from, to] dates. */
export const apiRange = (s: ViewState): string | [string, string] => (s.range === CUSTOM ? [s.from, s.to] : s.range);

/** The range for a file name or a caption: `7d`, or `2026-11-01_2026-11-07`. */
export const rangeName = (s: ViewState) => (s.range === CUSTOM ? `${s.from}_${s.to}` : s.range);

/** The filters as the query API takes them. */
export function apiFilters(s: ViewState): unknown[] {
  return s.filters.map((f) => ['is', f.dimension, [f.value]]);
}

/** A page's own URL parameters; a list repeats the key (`s=a&s=b`). */
export type Params = Record<string, string | string[] | undefined>;

export function pageUrl(path: string, s: ViewState, params: Params = {}): string {
  const url = stateUrl(s, path);
  const q = new URLSearchParams(url.slice(url.indexOf('?') + 1));
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined) continue;
    for (const x of Array.isArray(v) ? v : [v]) q.append(k, x);
  }
  return `${path}?${q.toString()}`;
}

/** The current URL's parameters. */
export const urlParams = () => new URLSearchParams(location.search);
