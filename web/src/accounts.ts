// Accounts: the B2B health table (ThriveStack's view): every account with its users,
// DAU/WAU/MAU, stickiness, events against the previous period and its health; filtered by
// health and by id, sorted by any column, in pages. The CSV holds every matching account,
// not only the page shown. One `accounts` query per page.
//
// URL: /accounts?project=shop&range=28d&health=At Risk&q=ac&sort=events&dir=desc&page=2&per=25
import { Project, query } from './api';
import { formatNumber, h } from './dom';
import { Params, ViewState, apiRange, pageUrl, urlParams } from './state';
import { account } from './account';
import { Cell, Grid, View, csvName, failure, loading, noData, periodControls, select, toCsv } from './ui';

const HEALTH = ['New', 'Healthy', 'At Risk', 'Critical', 'Inactive'];
const COLUMNS: { key: string; label: string; numeric: boolean }[] = [
  { key: 'account_id', label: 'Account', numeric: false },
  { key: 'name', label: 'Name', numeric: false },
  { key: 'health', label: 'Health', numeric: false },
  { key: 'users', label: 'Users', numeric: true },
  { key: 'dau', label: 'DAU', numeric: true },
  { key: 'wau', label: 'WAU', numeric: true },
  { key: 'mau', label: 'MAU', numeric: true },
  { key: 'stickiness', label: 'DAU/MAU', numeric: true },
  { key: 'events', label: 'Events', numeric: true },
  { key: 'previous_events', label: 'Previous period', numeric: true },
  { key: 'trend', label: 'Trend %', numeric: true },
  { key: 'last_active', label: 'Last active', numeric: false },
];
const PER_PAGE = [25, 50, 100];

interface AccountsParams {
  health: string;
  search: string;
  sort: string;
  dir: 'asc' | 'desc';
  page: number;
  per: number;
}

function readParams(): AccountsParams {
  const q = urlParams();
  const sort = q.get('sort') ?? '';
  const per = Math.round(Number(q.get('per') ?? 25));
  const page = Math.round(Number(q.get('page') ?? 1));
  return {
    health: HEALTH.includes(q.get('health') ?? '') ? q.get('health')! : '',
    search: q.get('q') ?? '',
    sort: COLUMNS.some((c) => c.key === sort) ? sort : 'events',
    dir: q.get('dir') === 'asc' ? 'asc' : 'desc',
    page: page >= 1 ? page : 1,
    per: per >= 1 && per <= 1000 ? per : 25,
  };
}

const toParams = (p: AccountsParams): Params => ({
  health: p.health || undefined,
  q: p.search || undefined,
  sort: p.sort,
  dir: p.dir,
  page: p.page > 1 ? String(p.page) : undefined,
  per: p.per === 25 ? undefined : String(p.per),
});

const rowOf = (a: any): Cell[] => COLUMNS.map((c) => (a[c.key] === undefined ? null : a[c.key]));

export function accounts(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  // ?account=acme: that one account's page.
  const one = urlParams().get('account');
  if (one) return account(one, project, state, nav);
  const p = readParams();
  // A new range, filter or sort starts at the first page.
  const go = (s: ViewState) => nav(s, toParams({ ...p, page: 1 }));
  const set = (changes: Partial<AccountsParams>) => nav(state, toParams({ ...p, page: 1, ...changes }));
  let alive = true;

  const body = (limit: number, offset: number) => ({
    kind: 'accounts',
    date_range: apiRange(state),
    timezone: state.timezone,
    filters: [
      ...(p.health ? [['is', 'account:health', [p.health]]] : []),
      ...(p.search ? [['contains', 'account:id', [p.search]]] : []),
    ],
    order_by: [[p.sort, p.dir]],
    pagination: { limit, offset },
  });

  const search = h('input', {
    id: 'account-search',
    type: 'search',
    value: p.search,
    placeholder: 'account id contains…',
    onchange: (e: Event) => set({ search: (e.target as HTMLInputElement).value.trim() }),
  });
  const controls = periodControls(
    state,
    go,
    { compare: false },
    ...select('health', 'Health', [['', 'Any'], ...HEALTH.map((x): [string, string] => [x, x])], p.health, (v) =>
      set({ health: v }),
    ),
    h('label', { for: 'account-search' }, 'Search'),
    search,
  );
  const box = h('div', { id: 'accounts-box' });
  const summary = h('p', { class: 'period', id: 'accounts-summary' });
  const pager = h('div', { class: 'pager', id: 'accounts-pager' });
  const csv = h(
    'button',
    {
      type: 'button',
      id: 'accounts-csv',
      class: 'csv',
      onclick: () => void exportAll(),
    },
    'Export CSV',
  );
  const el = h(
    'div',
    { class: 'accounts-page' },
    controls,
    h(
      'section',
      { class: 'card', id: 'accounts', 'aria-labelledby': 'accounts-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'accounts-title' }, 'Accounts'), summary, csv),
      box,
      pager,
    ),
  );

  // Every matching account, 1,000 (the API's largest page) at a time.
  const exportAll = async () => {
    csv.setAttribute('disabled', '');
    try {
      const rows: Cell[][] = [];
      for (let offset = 0; ; offset += 1000) {
        const r = await query(project.id, body(1000, offset));
        rows.push(...(r.results as any[]).map(rowOf));
        if (rows.length >= Number(r.total_rows) || r.results.length === 0) break;
      }
      const grid: Grid = { columns: COLUMNS.map((c) => c.label), rows };
      const url = URL.createObjectURL(new Blob([toCsv(grid)], { type: 'text/csv;charset=utf-8' }));
      const a = h('a', { href: url, download: csvName('accounts', state) });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      if (alive) box.prepend(failure('the export', e, () => void exportAll()));
    } finally {
      csv.removeAttribute('disabled');
    }
  };

  const load = async () => {
    box.replaceChildren(loading());
    pager.replaceChildren();
    try {
      const r = await query(project.id, body(p.per, (p.page - 1) * p.per));
      if (!alive) return;
      draw(r);
    } catch (e) {
      if (alive) box.replaceChildren(failure('the accounts', e, load));
    }
  };

  const draw = (r: any) => {
    const [from, to] = r.query.date_range as [string, string];
    const total = Number(r.total_rows);
    const rows = r.results as any[];
    const first = (p.page - 1) * p.per + 1;
    summary.textContent = `${from.slice(0, 10)} to ${to.slice(0, 10)}: ${formatNumber(total)} ${total === 1 ? 'account' : 'accounts'}`;
    if (rows.length === 0) {
      box.replaceChildren(
        p.health || p.search || p.page > 1
          ? h('p', { class: 'empty' }, 'No account matches.')
          : h('div', {}, h('p', { class: 'empty' }, 'No accounts yet: accounts come from group calls and events with a group id.'), noData(project, state.timezone)),
      );
    } else {
      box.replaceChildren(table(rows));
    }
    const pages = Math.max(1, Math.ceil(total / p.per));
    pager.replaceChildren(
      h('span', { id: 'accounts-range' }, rows.length ? `${first}–${first + rows.length - 1} of ${formatNumber(total)}` : ''),
      h('button', { type: 'button', id: 'accounts-prev', disabled: p.page <= 1, onclick: () => nav(state, toParams({ ...p, page: p.page - 1 })) }, '← Previous'),
      h('span', {}, `Page ${p.page} of ${pages}`),
      h('button', { type: 'button', id: 'accounts-next', disabled: p.page >= pages, onclick: () => nav(state, toParams({ ...p, page: p.page + 1 })) }, 'Next →'),
      ...select(
        'per-page',
        'Per page',
        [...new Set([...PER_PAGE, p.per])].sort((a, b) => a - b).map((n): [string, string] => [String(n), String(n)]),
        String(p.per),
        (v) => set({ per: Number(v) }),
      ),
    );
  };

  const table = (rows: any[]) =>
    h(
      'div',
      { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': 'Accounts' },
      h(
        'table',
        { id: 'accounts-table' },
        h('caption', { class: 'visually-hidden' }, 'Accounts and their health; the column buttons sort'),
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            ...COLUMNS.map((c) => {
              const active = c.key === p.sort;
              // A first click sorts numbers from the largest, names from A.
              const next: 'asc' | 'desc' = active ? (p.dir === 'asc' ? 'desc' : 'asc') : c.numeric || c.key === 'last_active' ? 'desc' : 'asc';
              return h(
                'th',
                {
                  scope: 'col',
                  class: c.numeric ? 'num' : undefined,
                  'aria-sort': active ? (p.dir === 'asc' ? 'ascending' : 'descending') : undefined,
                },
                h(
                  'button',
                  { type: 'button', class: 'sort', 'data-sort': c.key, onclick: () => set({ sort: c.key, dir: next }) },
                  c.label,
                  active ? (p.dir === 'asc' ? ' ▲' : ' ▼') : '',
                ),
              );
            }),
          ),
        ),
        h(
          'tbody',
          {},
          ...rows.map((a) =>
            h(
              'tr',
              { 'data-key': String(a.account_id) },
              ...rowOf(a).map((v, i) => {
                const c = COLUMNS[i];
                const text =
                  v === null
                    ? '–'
                    : c.key === 'health'
                      ? h('span', { class: `health health-${String(v).toLowerCase().replace(' ', '-')}` }, String(v))
                      : c.key === 'last_active'
                        ? String(v).slice(0, 16).replace('T', ' ')
                        : c.key === 'stickiness'
                          ? `${Math.round(Number(v) * 100)}%`
                          : typeof v === 'number'
                            ? formatNumber(v)
                            : String(v);
                return h(
                  i === 0 ? 'th' : 'td',
                  { scope: i === 0 ? 'row' : undefined, class: c.numeric ? 'num' : undefined, 'data-value': v === null ? 'null' : String(v) },
                  i === 0 ? h('a', { href: pageUrl('/accounts', state, { account: String(v) }), 'data-nav': '', class: 'account-link' }, text) : text,
                );
              }),
            ),
          ),
        ),
      ),
    );

  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}
