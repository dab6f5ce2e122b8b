// One account: its numbers for the period (the `accounts` query's row for it), its health
// and the rule that gave it, and its people (the `accounts` query with `account_id`):
// events, days active and last activity in the period, and their traits. The CSV holds
// every one of its people, not only the first page.
//
// URL: /accounts?project=shop&range=28d&account=acme
import { Project, query } from './api';
import { personUrl } from './person';
import { PALETTE, drawLines } from './chart';
import { formatNumber, h } from './dom';
import { Params, ViewState, apiRange, pageUrl } from './state';
import { Cell, Grid, View, failure, gridTable, loading, csvName, periodControls, toCsv } from './ui';

const PEOPLE_COLUMNS = ['Person', 'Events', 'Days active', 'Last active', 'Traits'];
const PAGE = 100;

/** Why the account has its health: the first rule of docs/queries.md that holds, in the
 * answer's own numbers and thresholds (the server decides; this only explains). */
export function healthReason(a: any, health: any, periodEnd: string): string {
  const trend = a.trend === null || a.trend === undefined ? null : Number(a.trend);
  const fell = trend === null ? '' : `${formatNumber(a.previous_events)} → ${formatNumber(a.events)} events, ${trend}%`;
  const stick = `DAU/MAU ${Math.round(Number(a.stickiness) * 100)}%`;
  switch (a.health) {
    case 'New':
      return `First seen ${String(a.first_seen ?? '?').slice(0, 10)}, within ${health.new_days} days of the period's end (${periodEnd}).`;
    case 'Inactive':
      return 'No activity in the period.';
    case 'Critical':
      return `Activity fell by ${health.critical_drop}% or more against the previous period (${fell}).`;
    case 'At Risk':
      return trend !== null && trend <= -Number(health.at_risk_drop)
        ? `Activity fell by ${health.at_risk_drop}% or more against the previous period (${fell}).`
        : `Few of its monthly active people come daily: ${stick}, below ${Math.round(Number(health.min_stickiness) * 100)}%.`;
    default:
      return `Activity did not fall by ${health.at_risk_drop}% or more (${fell || 'no previous period to compare'}) and ${stick} is at least ${Math.round(Number(health.min_stickiness) * 100)}%.`;
  }
}

export function account(id: string, project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  let alive = true;
  const go = (s: ViewState) => nav(s, { account: id });
  const head = h('section', { class: 'card account-head', id: 'account', 'aria-labelledby': 'account-title' }, loading());
  const people = h('div', { id: 'account-people-box' }, loading());
  const peopleSummary = h('p', { class: 'period', id: 'account-people-summary' });
  const csv = h('button', { type: 'button', id: 'account-csv', class: 'csv', onclick: () => void exportAll() }, 'Export CSV');
  // Activity over time: the account's events and active people per day (the answer's
  // `activity`), as a chart and, for reading and export, a table.
  const activity = h('section', { class: 'card', id: 'account-activity', 'aria-labelledby': 'account-activity-title' }, h('h2', { id: 'account-activity-title' }, 'Activity'), loading());
  let undraw: (() => void) | null = null;
  const drawActivity = (days: { day: string; events: number; people: number }[]) => {
    const chart = h('div', { class: 'chart', id: 'account-activity-chart', role: 'img', 'aria-label': `Events and people of ${id} per day` });
    const rows: Cell[][] = days.map((d) => [d.day, Number(d.events), Number(d.people)]);
    const grid: Grid = { columns: ['Day', 'Events', 'People'], rows, key: (i) => String(rows[i][0]) };
    activity.replaceChildren(
      h('h2', { id: 'account-activity-title' }, 'Activity'),
      chart,
      h('details', {}, h('summary', {}, 'As a table'), gridTable(grid, 'account-activity-table', `Activity of ${id} per day`)),
    );
    undraw?.();
    undraw = drawLines(chart, days.map((d) => d.day), [
      { label: 'Events', data: days.map((d) => Number(d.events)), color: PALETTE[0], fill: true },
      { label: 'People', data: days.map((d) => Number(d.people)), color: PALETTE[1], right: true },
    ]);
  };
  const el = h(
    'div',
    { class: 'account-page' },
    periodControls(state, go, { compare: false }, h('a', { href: pageUrl('/accounts', state), 'data-nav': '', id: 'all-accounts' }, '← All accounts')),
    head,
    activity,
    h(
      'section',
      { class: 'card', id: 'account-people', 'aria-labelledby': 'account-people-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'account-people-title' }, 'People'), peopleSummary, csv),
      people,
    ),
  );

  const usersBody = (limit: number, offset: number) => ({
    kind: 'accounts',
    account_id: id,
    date_range: apiRange(state),
    timezone: state.timezone,
    pagination: { limit, offset },
  });
  const personRow = (u: any): Cell[] => [
    String(u.user_id),
    Number(u.events),
    Number(u.days_active),
    u.last_active ?? null,
    Object.keys(u.traits ?? {}).length ? JSON.stringify(u.traits) : '',
  ];

  const loadHead = async () => {
    try {
      const r = await query(project.id, {
        kind: 'accounts',
        date_range: apiRange(state),
        timezone: state.timezone,
        filters: [['is', 'account:id', [id]]],
        pagination: { limit: 1, offset: 0 },
      });
      if (!alive) return;
      const [from, to] = r.query.date_range as [string, string];
      const a = r.results[0];
      if (!a) {
        head.replaceChildren(h('h2', { id: 'account-title' }, id), h('p', { class: 'empty', id: 'account-missing' }, `No account “${id}” in ${from.slice(0, 10)} to ${to.slice(0, 10)}.`));
        return;
      }
      const fact = (key: string, label: string, value: string, raw: unknown) =>
        h('div', { class: 'kpi', 'data-metric': key, 'data-value': raw === null ? 'null' : String(raw) }, h('div', { class: 'kpi-label' }, label), h('div', { class: 'kpi-value' }, value));
      const traits = Object.entries(a.traits ?? {});
      head.replaceChildren(
        h('h2', { id: 'account-title' }, a.name ? `${a.name} (${a.account_id})` : String(a.account_id)),
        h(
          'p',
          { class: 'account-health' },
          h('span', { class: `health health-${String(a.health).toLowerCase().replace(' ', '-')}`, id: 'account-health' }, String(a.health)),
          ' ',
          h('span', { id: 'account-why' }, healthReason(a, r.query.health, to.slice(0, 10))),
        ),
        h(
          'div',
          { class: 'kpis' },
          fact('users', 'Users', formatNumber(a.users), a.users),
          fact('dau', 'DAU', formatNumber(a.dau), a.dau),
          fact('wau', 'WAU', formatNumber(a.wau), a.wau),
          fact('mau', 'MAU', formatNumber(a.mau), a.mau),
          fact('stickiness', 'DAU/MAU', `${Math.round(Number(a.stickiness) * 100)}%`, a.stickiness),
          fact('events', 'Events', formatNumber(a.events), a.events),
          fact('previous_events', 'Previous period', formatNumber(a.previous_events), a.previous_events),
          fact('trend', 'Trend', a.trend === null ? '–' : `${a.trend}%`, a.trend),
        ),
        h(
          'p',
          { class: 'period' },
          `${from.slice(0, 10)} to ${to.slice(0, 10)} · first seen ${String(a.first_seen ?? '–').slice(0, 16).replace('T', ' ')} · last active ${a.last_active ? String(a.last_active).slice(0, 16).replace('T', ' ') : '–'}`,
        ),
        traits.length
          ? h('dl', { class: 'traits', id: 'account-traits' }, ...traits.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, typeof v === 'string' ? v : JSON.stringify(v))]))
          : h('p', { class: 'empty' }, 'No traits (no group call named this account).'),
      );
    } catch (e) {
      if (alive) head.replaceChildren(failure('the account', e, loadHead));
    }
  };

  const loadPeople = async () => {
    try {
      const r = await query(project.id, usersBody(PAGE, 0));
      if (!alive) return;
      const total = Number(r.total_rows);
      drawActivity(r.activity ?? []);
      const rows = (r.results as any[]).map(personRow);
      peopleSummary.textContent = `${formatNumber(total)} ${total === 1 ? 'person' : 'people'}${total > rows.length ? `, the ${rows.length} most active shown` : ''}`;
      if (rows.length === 0) {
        people.replaceChildren(h('p', { class: 'empty' }, 'Nobody: no members and no events of this account in the period.'));
        return;
      }
      const grid: Grid = {
        columns: PEOPLE_COLUMNS,
        rows,
        numeric: (c) => c === 1 || c === 2,
        key: (i) => String(rows[i][0]),
        link: (v, c) => (c === 0 && v ? personUrl(state, String(v)) : null),
      };
      people.replaceChildren(gridTable(grid, 'account-people-table', `The people of ${id}`));
    } catch (e) {
      if (alive) activity.replaceChildren(h('h2', { id: 'account-activity-title' }, 'Activity'), failure('the activity', e, loadPeople));
      if (alive) people.replaceChildren(failure('the people', e, loadPeople));
    }
  };

  const exportAll = async () => {
    csv.setAttribute('disabled', '');
    try {
      const rows: Cell[][] = [];
      for (let offset = 0; ; offset += 1000) {
        const r = await query(project.id, usersBody(1000, offset));
        rows.push(...(r.results as any[]).map(personRow));
        if (rows.length >= Number(r.total_rows) || r.results.length === 0) break;
      }
      const url = URL.createObjectURL(new Blob([toCsv({ columns: PEOPLE_COLUMNS, rows })], { type: 'text/csv;charset=utf-8' }));
      const a = h('a', { href: url, download: csvName(`account-${id}`, state) });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      if (alive) people.prepend(failure('the export', e, () => void exportAll()));
    } finally {
      csv.removeAttribute('disabled');
    }
  };

  void loadHead();
  void loadPeople();
  return {
    el,
    destroy() {
      alive = false;
      undraw?.();
    },
  };
}
