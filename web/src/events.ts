// Events → the live stream: what arrived in the last few minutes, newest first, asked
// for again every 5 seconds (the `events` query kind over [now − N min, now + 1 min],
// deduplicated by uuid), with the `realtime` numbers of the same minutes above it. A
// row opens to show the event's properties and context. The CSV is the table as shown.
//
// With minutes=0 it lists the events of the page's date range instead, oldest first, in
// pages of 100, without live updates.
//
// URL: /events?project=shop&minutes=30&event=signed_up&paused=1
//      /events?project=shop&range=custom&from=2026-11-01&to=2026-11-01&minutes=0&page=2
import { Project, query } from './api';
import { personUrl } from './person';
import { formatNumber, h } from './dom';
import { Params, ViewState, apiFilters, apiRange, urlParams } from './state';
import { eventSelect } from './trends';
import { Cell, Grid, View, csvButton, csvName, failure, filterChips, loading, noData, pagePath, periodControls, select } from './ui';

const WINDOWS: [string, string][] = [
  ['5', 'Last 5 minutes'],
  ['30', 'Last 30 minutes'],
  ['60', 'Last 60 minutes'],
  ['0', 'The date range (no live updates)'],
];
/** Events per page when browsing a date range. */
const BROWSE_PAGE = 100;
/** Rows kept on screen (the newest). */
const KEEP = 200;
/** The API's largest page, and how many pages a first load reads at most. */
const PAGE = 1000;
const MAX_PAGES = 5;
const POLL_MS = 5000;
/** Events reach the store a moment after they happened; each poll reads this far back
 * before the newest event seen, so a late one is not skipped (uuids drop repeats). */
const OVERLAP_MS = 120_000;

interface StreamParams {
  minutes: number;
  event: string;
  paused: boolean;
}

function readParams(): StreamParams {
  const q = urlParams();
  const minutes = q.get('minutes') ?? '30';
  return {
    minutes: WINDOWS.some(([m]) => m === minutes) ? Number(minutes) : 30,
    event: q.get('event') || '$any',
    paused: q.get('paused') === '1',
  };
}
const toParams = (p: StreamParams): Params => ({
  minutes: String(p.minutes),
  event: p.event === '$any' ? undefined : p.event,
  paused: p.paused ? '1' : undefined,
});

interface RawEvent {
  uuid: string;
  type: string;
  event: string | null;
  user_id: string | null;
  device_id: string | null;
  session_id: string | null;
  group_id: string | null;
  timestamp: string;
  received_at: string;
  properties: Record<string, unknown>;
  context: Record<string, unknown>;
  traits: Record<string, unknown>;
}

const COLUMNS = ['Time (UTC)', 'Event', 'Type', 'Person', 'Account', 'Page', 'uuid'];

const person = (e: RawEvent) => e.user_id || e.device_id || e.session_id || '';
const page = (e: RawEvent) => pagePath(e.properties ?? {});
const rowOf = (e: RawEvent): Cell[] => [
  e.timestamp.slice(0, 19).replace('T', ' '),
  e.event ?? `(${e.type})`,
  e.type,
  person(e),
  e.group_id ?? '',
  page(e),
  e.uuid,
];

export function liveEvents(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  const p = readParams();
  if (p.minutes === 0) return browse(project, state, nav, p);
  const go = (s: ViewState) => nav(s, toParams(p));
  const set = (changes: Partial<StreamParams>) => nav(state, toParams({ ...p, ...changes }));
  let alive = true;
  let timer = 0;
  /** Newest first. */
  let events: RawEvent[] = [];
  const seen = new Set<string>();
  let grid: Grid | null = null;

  const numbers = h('div', { class: 'kpis live-kpis', id: 'live-kpis', 'aria-label': `The last ${p.minutes} minutes` });
  const box = h('div', { id: 'stream-box' }, loading());
  const summary = h('p', { class: 'period', id: 'stream-summary' });
  const el = h(
    'div',
    { class: 'events-page' },
    h(
      'div',
      { class: 'controls' },
      ...select('minutes', 'Window', WINDOWS, String(p.minutes), (v) => set({ minutes: Number(v) })),
      h('label', { for: 'stream-event' }, 'Event'),
      eventSelect(project, state, 'stream-event', 'Event', p.event, (v) => set({ event: v })),
      h(
        'label',
        { class: 'check' },
        h('input', { type: 'checkbox', id: 'paused', checked: p.paused, onchange: (e: Event) => set({ paused: (e.target as HTMLInputElement).checked }) }),
        ' Pause',
      ),
    ),
    filterChips(state, go),
    numbers,
    h(
      'section',
      { class: 'card', id: 'stream', 'aria-labelledby': 'stream-title' },
      h(
        'div',
        { class: 'card-head' },
        h('h2', { id: 'stream-title' }, 'Live events'),
        summary,
        csvButton('stream-csv', () => csvName('events', { ...state, range: `${p.minutes}min` }), () => grid),
      ),
      box,
    ),
  );

  const filters = () => [
    ...apiFilters(state),
    ...(p.event === '$any' ? [] : [['is', 'event:name', [p.event]]]),
  ];
  const iso = (ms: number) => new Date(ms).toISOString();

  /** Reads the events from `since` to a minute from now (clocks that run fast), page by
   * page, and keeps the ones not seen yet. */
  const fetchSince = async (since: number) => {
    const fresh: RawEvent[] = [];
    for (let i = 0; i < MAX_PAGES; i++) {
      const r = await query(
        project.id,
        {
          kind: 'events',
          date_range: [iso(since), iso(Date.now() + 60_000)],
          filters: filters(),
          pagination: { limit: PAGE, offset: i * PAGE },
        },
        { slot: 'events' },
      );
      const page = r.results as RawEvent[];
      for (const e of page) if (!seen.has(e.uuid)) (seen.add(e.uuid), fresh.push(e));
      if (page.length < PAGE) break;
    }
    return fresh;
  };

  const loadNumbers = async () => {
    try {
      const r = await query(project.id, { kind: 'realtime', minutes: p.minutes }, { slot: 'realtime' });
      if (!alive) return;
      const x = r.results;
      const kpi = (metric: string, label: string, v: number) =>
        h('div', { class: 'kpi', 'data-metric': metric, 'data-value': String(v) }, h('div', { class: 'kpi-label' }, label), h('div', { class: 'kpi-value' }, formatNumber(v)));
      numbers.replaceChildren(
        kpi('visitors', 'People', Number(x.visitors)),
        kpi('devices', 'Devices', Number(x.devices)),
        kpi('events', 'Events', Number(x.events)),
        kpi('pageviews', 'Pageviews', Number(x.pageviews)),
      );
    } catch (e) {
      if (alive) numbers.replaceChildren(failure('the live numbers', e, loadNumbers));
    }
  };

  let busy = false;
  const poll = async (first: boolean) => {
    if (busy) return;
    busy = true;
    const newest = events[0] ? Date.parse(events[0].timestamp) : 0;
    const start = Date.now() - p.minutes * 60_000;
    try {
      const fresh = await fetchSince(first ? start : Math.max(start, newest - OVERLAP_MS));
      if (!alive) return;
      // Newest first; drop what fell out of the window.
      events = [...fresh.reverse(), ...events]
        .sort((a, b) => (a.timestamp < b.timestamp ? 1 : a.timestamp > b.timestamp ? -1 : 0))
        .filter((e) => Date.parse(e.timestamp) >= start)
        .slice(0, KEEP);
      draw();
    } catch (e) {
      if (alive) box.replaceChildren(failure('the events', e, () => void poll(true)));
    } finally {
      busy = false;
    }
  };

  const draw = () => {
    summary.textContent = `${formatNumber(events.length)} ${events.length === 1 ? 'event' : 'events'} in the last ${p.minutes} minutes${events.length >= KEEP ? ` (the newest ${KEEP})` : ''}${p.paused ? ', paused' : ', refreshed every 5 s'}`;
    grid = { columns: COLUMNS, rows: events.map(rowOf), numeric: () => false };
    if (events.length === 0) {
      box.replaceChildren(noData(project, state.timezone));
      box.querySelector('.empty')!.textContent = `No events in the last ${p.minutes} minutes.`;
      return;
    }
    box.replaceChildren(eventsTable(events, 'The events of the last minutes, newest first', state));
  };

  void loadNumbers();
  void poll(true);
  if (!p.paused) {
    timer = window.setInterval(() => {
      // A tab in the background does not poll; the next tick after it is shown does.
      if (document.hidden) return;
      void poll(false);
      void loadNumbers();
    }, POLL_MS);
  }
  return {
    el,
    destroy() {
      alive = false;
      window.clearInterval(timer);
    },
  };
}

/** The events as a table: a row each, opening to its JSON. */
function eventsTable(events: RawEvent[], caption: string, state: ViewState): HTMLElement {
  return h(
    'div',
    { class: 'table-scroll', tabindex: 0, role: 'region', 'aria-label': 'Events' },
    h(
      'table',
      { id: 'stream-table' },
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', {}, h('tr', {}, ...COLUMNS.slice(0, -1).map((c) => h('th', { scope: 'col' }, c)), h('th', { scope: 'col' }, 'Details'))),
      h(
        'tbody',
        {},
        ...events.map((e) => {
          const cells = rowOf(e);
          return h(
            'tr',
            { 'data-key': e.uuid },
            ...cells.slice(0, -1).map((v, i) =>
              h(
                i === 0 ? 'th' : 'td',
                { scope: i === 0 ? 'row' : undefined, 'data-value': String(v) },
                // The person opens their page (a linked device's id opens its user).
                i === 3 && (e.user_id || e.device_id) ? h('a', { href: personUrl(state, String(v)), 'data-nav': '' }, String(v)) : String(v),
              ),
            ),
            h(
              'td',
              {},
              h(
                'details',
                {},
                h('summary', {}, 'JSON'),
                h('pre', { class: 'event-json' }, JSON.stringify({ uuid: e.uuid, received_at: e.received_at, session_id: e.session_id, device_id: e.device_id, properties: e.properties, context: e.context, traits: e.traits }, null, 2)),
              ),
            ),
          );
        }),
      ),
    ),
  );
}

/** `minutes=0`: the events of the page's date range, oldest first, 100 a page; no
 * live updates. */
function browse(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void, p: StreamParams): View {
  const pageNo = Math.max(1, Math.round(Number(urlParams().get('page') ?? 1)) || 1);
  const params = (changes: Partial<StreamParams> & { page?: number }) => ({
    ...toParams({ ...p, ...changes }),
    page: (changes.page ?? 1) > 1 ? String(changes.page) : undefined,
  });
  const set = (changes: Partial<StreamParams> & { page?: number }) => nav(state, params(changes));
  const go = (s: ViewState) => nav(s, params({}));
  let alive = true;
  let grid: Grid | null = null;
  const box = h('div', { id: 'stream-box' }, loading());
  const summary = h('p', { class: 'period', id: 'stream-summary' });
  const pager = h('div', { class: 'pager', id: 'stream-pager' });
  const el = h(
    'div',
    { class: 'events-page' },
    h(
      'div',
      { class: 'controls' },
      ...select('minutes', 'Window', WINDOWS, '0', (v) => set({ minutes: Number(v) })),
      h('label', { for: 'stream-event' }, 'Event'),
      eventSelect(project, state, 'stream-event', 'Event', p.event, (v) => set({ event: v })),
    ),
    periodControls(state, go, { compare: false }),
    filterChips(state, go),
    h(
      'section',
      { class: 'card', id: 'stream', 'aria-labelledby': 'stream-title' },
      h(
        'div',
        { class: 'card-head' },
        h('h2', { id: 'stream-title' }, 'Events'),
        summary,
        csvButton('stream-csv', () => csvName(`events-p${pageNo}`, state), () => grid),
      ),
      box,
      pager,
    ),
  );
  const load = async () => {
    box.replaceChildren(loading());
    try {
      const r = await query(project.id, {
        kind: 'events',
        date_range: apiRange(state),
        timezone: state.timezone,
        filters: [...apiFilters(state), ...(p.event === '$any' ? [] : [['is', 'event:name', [p.event]]])],
        pagination: { limit: BROWSE_PAGE, offset: (pageNo - 1) * BROWSE_PAGE },
      });
      if (!alive) return;
      const [from, to] = r.query.date_range as [string, string];
      const events = r.results as RawEvent[];
      const first = (pageNo - 1) * BROWSE_PAGE + 1;
      summary.textContent = `${from.slice(0, 10)} to ${to.slice(0, 10)}, oldest first: ${events.length ? `events ${formatNumber(first)}–${formatNumber(first + events.length - 1)}` : 'no events'}`;
      grid = { columns: COLUMNS, rows: events.map(rowOf), numeric: () => false };
      if (events.length === 0) {
        box.replaceChildren(pageNo > 1 ? h('p', { class: 'empty' }, 'No more events.') : noData(project, state.timezone));
      } else {
        box.replaceChildren(eventsTable(events, 'The events of the period, oldest first', state));
      }
      pager.replaceChildren(
        h('button', { type: 'button', id: 'stream-prev', disabled: pageNo <= 1, onclick: () => set({ page: pageNo - 1 }) }, '← Previous'),
        h('span', {}, `Page ${pageNo}`),
        h('button', { type: 'button', id: 'stream-next', disabled: events.length < BROWSE_PAGE, onclick: () => set({ page: pageNo + 1 }) }, 'Next →'),
      );
    } catch (e) {
      if (alive) box.replaceChildren(failure('the events', e, load));
    }
  };
  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}
