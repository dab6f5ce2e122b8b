// People → one person's profile (the `person` query kind): their traits, the devices
// merged into them, their accounts, first and last seen, and their events in the date
// range, newest first, 100 a page. Without a person it asks for an id; people open from
// the event stream and an account's page too.
//
// URL: /people?project=app&range=28d&person=u1&page=2
import { Project, query } from './api';
import { formatNumber, h } from './dom';
import { Params, ViewState, apiRange, pageUrl, urlParams } from './state';
import { Cell, Grid, View, csvButton, csvName, failure, gridTable, loading, pagePath, periodControls } from './ui';

const PAGE = 100;
const COLUMNS = ['Time (UTC)', 'Event', 'Type', 'Device', 'Page', 'uuid'];

/** The link to `person`'s page, keeping the project and the period. */
export const personUrl = (state: ViewState, person: string) => pageUrl('/people', state, { person });

export function people(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  const q = urlParams();
  const person = q.get('person') ?? '';
  const page = Math.max(1, Number(q.get('page')) || 1);
  const go = (s: ViewState) => nav(s, { person: person || undefined });
  let alive = true;
  let grid: Grid | null = null;

  const input = h('input', { id: 'person-id', name: 'person', value: person, required: true, placeholder: 'u1, or a visitor id' });
  const find = h(
    'form',
    {
      class: 'inline-form',
      id: 'person-find',
      onsubmit: (e: Event) => {
        e.preventDefault();
        if (input.value.trim()) nav(state, { person: input.value.trim() });
      },
    },
    h('label', { for: 'person-id' }, 'Person'),
    input,
    h('button', { type: 'submit', id: 'person-open' }, 'Open'),
  );
  const head = h('section', { class: 'card', id: 'person', 'aria-labelledby': 'person-title' });
  const box = h('div', { id: 'timeline-box' });
  const summary = h('p', { class: 'period', id: 'timeline-summary' });
  const el = h(
    'div',
    { class: 'person-page' },
    periodControls(state, go, { compare: false }, find),
    head,
    h(
      'section',
      { class: 'card', id: 'timeline', 'aria-labelledby': 'timeline-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'timeline-title' }, 'Timeline'), summary, csvButton('timeline-csv', () => csvName(`person-${person}`, state), () => grid)),
      box,
    ),
  );

  if (!person) {
    head.replaceChildren(
      h('h2', { id: 'person-title' }, 'A person'),
      h('p', {}, 'Enter a user id, or an anonymous visitor’s id, above. People also open from the event stream and from an account’s page.'),
    );
    box.replaceChildren(h('p', { class: 'empty' }, 'No person chosen.'));
    return { el, destroy() {} };
  }

  const load = async () => {
    head.replaceChildren(loading());
    box.replaceChildren(loading());
    let r: any;
    try {
      r = await query(project.id, {
        kind: 'person',
        person_id: person,
        date_range: apiRange(state),
        timezone: state.timezone,
        pagination: { limit: PAGE, offset: (page - 1) * PAGE },
      });
    } catch (e) {
      if (!alive) return;
      head.replaceChildren(failure('the person', e, () => void load()));
      box.replaceChildren();
      return;
    }
    if (!alive) return;
    const p = r.results;
    const traits = Object.entries(p.traits ?? {});
    const dl = (pairs: [string, Node | string][]) =>
      h('dl', { class: 'facts' }, ...pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
    const day = (t: string | null) => (t ? t.slice(0, 19).replace('T', ' ') : '–');
    head.replaceChildren(
      h('h2', { id: 'person-title' }, String(p.person_id)),
      h('p', { id: 'person-resolved', hidden: p.asked_for === p.person_id }, `${p.asked_for} is a device linked to ${p.person_id}.`),
      dl([
        ['First seen (UTC)', day(p.first_seen)],
        ['Last seen (UTC)', day(p.last_seen)],
        ['Events in the period', formatNumber(Number(p.events))],
        [
          'Devices merged in',
          p.devices.length
            ? h('ul', { class: 'plain', id: 'person-devices' }, ...p.devices.map((d: any) => h('li', { 'data-device': d.device_id }, h('code', {}, d.device_id), ` linked ${day(d.linked_at)}`)))
            : 'none',
        ],
        [
          'Accounts',
          p.accounts.length
            ? h('ul', { class: 'plain', id: 'person-accounts' }, ...p.accounts.map((a: any) => h('li', {}, h('a', { href: pageUrl('/accounts', state, { account: a.account_id }), 'data-nav': '' }, a.account_id), ` since ${day(a.first_seen)}`)))
            : 'none',
        ],
      ]),
      h('h3', {}, 'Traits'),
      traits.length
        ? h(
            'table',
            { id: 'person-traits' },
            h('caption', { class: 'visually-hidden' }, `Traits of ${person}`),
            h('tbody', {}, ...traits.map(([k, v]) => h('tr', { 'data-key': k }, h('th', { scope: 'row' }, k), h('td', {}, typeof v === 'string' ? v : JSON.stringify(v))))),
          )
        : h('p', { class: 'empty', id: 'person-no-traits' }, 'No traits: never identified.'),
    );
    const total = Number(r.total_rows);
    const rows: Cell[][] = (p.timeline as any[]).map((e) => [
      String(e.timestamp).slice(0, 19).replace('T', ' '),
      e.event ?? `(${e.type})`,
      e.type,
      e.device_id ?? '',
      pagePath(e.properties ?? {}),
      e.uuid,
    ]);
    const first = (page - 1) * PAGE;
    summary.textContent = total === 0 ? '' : `${formatNumber(first + 1)}–${formatNumber(first + rows.length)} of ${formatNumber(total)}, newest first`;
    if (rows.length === 0) {
      grid = null;
      box.replaceChildren(h('p', { class: 'empty' }, Number(p.events) === 0 && !p.first_seen ? 'No events from this person at all: check the id.' : 'No events in this period.'));
      return;
    }
    grid = { columns: COLUMNS, rows, numeric: () => false, key: (i) => String(rows[i][5]) };
    const pager = h(
      'div',
      { class: 'pager' },
      h('button', { type: 'button', id: 'timeline-newer', disabled: page === 1, onclick: () => nav(state, { person, page: page > 2 ? String(page - 1) : undefined }) }, 'Newer'),
      h('button', { type: 'button', id: 'timeline-older', disabled: first + rows.length >= total, onclick: () => nav(state, { person, page: String(page + 1) }) }, 'Older'),
    );
    box.replaceChildren(gridTable(grid, 'timeline-table', `Events of ${person}`), pager);
  };
  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}
