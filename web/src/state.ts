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

export interface Filter {
  dimension: string;
  value: string;
}

export interface ViewState {
  project: string;
  range: string;
  compare: boolean;
  filters: Filter[];
  /** IANA zone the dates are read in: ?tz=, else the browser's. */
  timezone: string;
}

export function readState(): ViewState {
  const q = new URLSearchParams(location.search);
  const range = q.get('range') ?? '28d';
  const filters: Filter[] = q.getAll('f').flatMap((f) => {
    const at = f.indexOf('|');
    return at > 0 ? [{ dimension: f.slice(0, at), value: f.slice(at + 1) }] : [];
  });
  return {
    project: q.get('project') ?? '',
    range: RANGES.some((r) => r.id === range) ? range : '28d',
    compare: q.get('compare') !== '0',
    filters,
    timezone: q.get('tz') || Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC',
  };
}

export function stateUrl(s: ViewState, path = '/'): string {
  const q = new URLSearchParams();
  if (s.project) q.set('project', s.project);
  q.set('range', s.range);
  if (!s.compare) q.set('compare', '0');
  for (const f of s.filters) q.append('f', `${f.dimension}|${f.value}`);
  const tz = new URLSearchParams(location.search).get('tz');
  if (tz) q.set('tz', tz);
  return `${path}?${q.toString()}`;
}

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
