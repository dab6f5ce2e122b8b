// Insights → Paths: what people did right after (or right before) a start event. The
// `paths` query anchors each person at their first start event in the range; a column
// per step lists its most common edges (from → to) with the people who took them, drawn
// as bars against the people who started; the table holds the same edges, with CSV.
//
// URL: /insights/paths?project=shop&range=7d&start=signed_up&dir=next&item=event&depth=3
import { Project, query } from './api';
import { formatNumber, h } from './dom';
import { Params, ViewState, apiFilters, apiRange, urlParams } from './state';
import { eventSelect } from './trends';
import {
  Grid,
  View,
  csvButton,
  csvName,
  eventLabel,
  failure,
  filterChips,
  gridTable,
  loading,
  noData,
  periodControls,
  select,
} from './ui';

interface PathsParams {
  start: string;
  next: boolean;
  pages: boolean;
  depth: number;
}

function readParams(): PathsParams {
  const q = urlParams();
  const depth = Math.round(Number(q.get('depth') ?? 3));
  return {
    start: q.get('start') || '$any',
    next: q.get('dir') !== 'previous',
    pages: q.get('item') === 'page',
    depth: depth >= 1 && depth <= 10 ? depth : 3,
  };
}
const toParams = (p: PathsParams): Params => ({
  start: p.start,
  dir: p.next ? 'next' : 'previous',
  item: p.pages ? 'page' : 'event',
  depth: String(p.depth),
});

const pct = (n: number, of: number) => (of > 0 ? Math.round((n / of) * 10_000) / 100 : 0);

export function paths(project: Project, state: ViewState, nav: (s: ViewState, p: Params) => void): View {
  const p = readParams();
  const go = (s: ViewState) => nav(s, toParams(p));
  const set = (changes: Partial<PathsParams>) => nav(state, toParams({ ...p, ...changes }));
  let alive = true;
  let grid: Grid | null = null;

  const builder = h(
    'section',
    { class: 'card builder', 'aria-label': 'Paths query' },
    h(
      'div',
      { class: 'controls' },
      h('label', { for: 'path-start' }, 'Start at'),
      eventSelect(project, state, 'path-start', 'Start event', p.start, (v) => set({ start: v })),
      ...select('path-dir', 'Show', [['next', 'What came next'], ['previous', 'What led there']], p.next ? 'next' : 'previous', (v) =>
        set({ next: v !== 'previous' }),
      ),
      ...select('path-item', 'Steps are', [['event', 'Events'], ['page', 'Pages']], p.pages ? 'page' : 'event', (v) =>
        set({ pages: v === 'page' }),
      ),
      ...select(
        'path-depth',
        'Steps',
        Array.from({ length: 10 }, (_, i): [string, string] => [String(i + 1), String(i + 1)]),
        String(p.depth),
        (v) => set({ depth: Number(v) }),
      ),
    ),
  );
  const box = h('div', { id: 'paths-box' });
  const summary = h('p', { class: 'period', id: 'paths-summary' });
  const el = h(
    'div',
    { class: 'insight paths-page' },
    periodControls(state, go, { compare: false }),
    filterChips(state, go),
    builder,
    h(
      'section',
      { class: 'card', id: 'paths', 'aria-labelledby': 'paths-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'paths-title' }, 'Paths'), summary, csvButton('paths-csv', () => csvName('paths', state), () => grid)),
      box,
    ),
  );

  const load = async () => {
    grid = null;
    box.replaceChildren(loading());
    try {
      const r = await query(project.id, {
        kind: 'paths',
        date_range: apiRange(state),
        timezone: state.timezone,
        filters: apiFilters(state),
        start: { event: p.start },
        direction: p.next ? 'next' : 'previous',
        item: p.pages ? 'page' : 'event',
        depth: p.depth,
      });
      if (alive) draw(r);
    } catch (e) {
      if (alive) box.replaceChildren(failure('the paths', e, load));
    }
  };

  const draw = (r: any) => {
    const [from, to] = r.query.date_range as [string, string];
    const res = r.results;
    const people = Number(res.people);
    const steps = res.steps as { step: number; edges: { from: string; to: string; count: number }[] }[];
    summary.textContent = `${from.slice(0, 10)} to ${to.slice(0, 10)}: ${formatNumber(people)} ${people === 1 ? 'person' : 'people'} started`;
    if (people === 0) {
      box.replaceChildren(noData(project, state.timezone));
      return;
    }
    const label = (x: string) => (p.pages ? x : eventLabel(x));
    grid = {
      columns: ['Step', 'From', 'To', 'People', '% of starts'],
      rows: steps.flatMap((s) => s.edges.map((e) => [s.step, e.from, e.to, e.count, pct(e.count, people)])),
      numeric: (c) => c === 0 || c >= 3,
      key: (i) => String(i),
    };
    const arrow = p.next ? '→' : '←';
    const columns = h(
      'div',
      { class: 'path-columns', role: 'list', 'aria-label': `Paths per step; the table below has the numbers` },
      h(
        'div',
        { class: 'path-column', role: 'listitem' },
        h('h3', {}, 'Start'),
        ...(res.starts as { item: string; count: number }[]).map((s) => pathBox(label(s.item), s.count, people)),
      ),
      ...steps.map((s) =>
        h(
          'div',
          { class: 'path-column', role: 'listitem', 'data-step': String(s.step) },
          h('h3', {}, p.next ? `Step ${s.step}` : `${s.step} before`),
          ...(s.edges.length ? s.edges.map((e) => pathBox(`${label(e.from)} ${arrow} ${label(e.to)}`, e.count, people)) : [h('p', { class: 'empty' }, 'Nobody went on.')]),
        ),
      ),
    );
    box.replaceChildren(columns, gridTable(grid, 'paths-table', 'Paths: the most common edges of each step'));
  };

  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}

function pathBox(text: string, count: number, people: number): HTMLElement {
  return h(
    'div',
    { class: 'path-box', title: `${text}: ${count} of ${people} people` },
    h('span', { class: 'path-text' }, text),
    h('span', { class: 'path-count' }, `${formatNumber(count)} · ${pct(count, people)}%`),
    h('span', { class: 'hbar-track' }, h('span', { class: 'hbar-fill', style: `width: ${pct(count, people)}%` })),
  );
}
