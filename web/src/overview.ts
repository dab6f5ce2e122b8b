// The Overview: the period's headline numbers with their change, the time chart, the
// breakdowns (a click on a row filters the whole page by it), top events and the live
// visitor count. Every section loads on its own and shows its own loading, error and
// empty states.
import { Project, Session, query } from './api';
import { drawChart } from './chart';
import { formatDuration, formatNumber, h } from './dom';
import { ViewState, apiFilters, apiRange, stateUrl } from './state';
import { DIMENSION_NAMES, emptyState, failure, periodControls } from './ui';

interface Kpi {
  metric: string;
  label: string;
  format: (v: number) => string;
  /** A fall is good news (bounce rate). */
  lowerIsBetter?: boolean;
}

const KPIS: Kpi[] = [
  { metric: 'visitors', label: 'Unique visitors', format: formatNumber },
  { metric: 'visits', label: 'Visits', format: formatNumber },
  { metric: 'pageviews', label: 'Pageviews', format: formatNumber },
  { metric: 'views_per_visit', label: 'Views per visit', format: formatNumber },
  { metric: 'bounce_rate', label: 'Bounce rate', format: (v) => `${v}%`, lowerIsBetter: true },
  { metric: 'visit_duration', label: 'Visit duration', format: formatDuration },
];

interface Breakdown {
  id: string;
  title: string;
  dimension: string;
  column: string;
  metrics: { metric: string; label: string }[];
  /** Extra filters for this table only. */
  only?: unknown[];
}

const BREAKDOWNS: Breakdown[] = [
  {
    id: 'pages',
    title: 'Top pages',
    dimension: 'event:page',
    column: 'Page',
    metrics: [
      { metric: 'visitors', label: 'Visitors' },
      { metric: 'pageviews', label: 'Pageviews' },
    ],
    only: [['is_set', 'event:page']],
  },
  {
    id: 'sources',
    title: 'Sources',
    dimension: 'visit:source',
    column: 'Source',
    metrics: [{ metric: 'visitors', label: 'Visitors' }],
  },
  {
    id: 'countries',
    title: 'Countries',
    dimension: 'visit:country',
    column: 'Country',
    metrics: [{ metric: 'visitors', label: 'Visitors' }],
  },
  {
    id: 'devices',
    title: 'Devices',
    dimension: 'visit:device',
    column: 'Device',
    metrics: [{ metric: 'visitors', label: 'Visitors' }],
  },
  {
    id: 'browsers',
    title: 'Browsers',
    dimension: 'visit:browser',
    column: 'Browser',
    metrics: [{ metric: 'visitors', label: 'Visitors' }],
  },
  {
    id: 'events',
    title: 'Top events',
    dimension: 'event:name',
    column: 'Event',
    metrics: [
      { metric: 'visitors', label: 'Visitors' },
      { metric: 'events', label: 'Events' },
    ],
  },
];

export interface Overview {
  el: HTMLElement;
  destroy(): void;
}

/** Draws the Overview of `state.project`; `go` changes the state (and the URL). */
export function overview(
  session: Session,
  project: Project,
  state: ViewState,
  go: (s: ViewState) => void,
): Overview {
  const cleanups: (() => void)[] = [];
  let alive = true;
  const base = {
    date_range: apiRange(state),
    timezone: state.timezone,
    filters: apiFilters(state),
  };
  const run = (body: Record<string, unknown>) => query(project.id, body);

  // --- controls ---
  const period = h('span', { class: 'period', id: 'period' });
  const live = h('span', { class: 'live', id: 'live', 'aria-live': 'polite' }, 'Live: …');
  const controls = periodControls(state, go, { compare: true }, period, live);

  const chips = h(
    'div',
    { class: 'filters', id: 'filters' },
    ...state.filters.map((f, i) =>
      h(
        'span',
        { class: 'chip' },
        `${DIMENSION_NAMES[f.dimension] ?? f.dimension} is ${f.value}`,
        h(
          'button',
          {
            type: 'button',
            class: 'chip-remove',
            'aria-label': `Remove filter ${DIMENSION_NAMES[f.dimension] ?? f.dimension} is ${f.value}`,
            onclick: () => go({ ...state, filters: state.filters.filter((_, j) => j !== i) }),
          },
          '×',
        ),
      ),
    ),
  );

  const kpis = h('section', { class: 'kpis', id: 'kpis', 'aria-label': 'Headline numbers' });
  const chart = h('section', { class: 'card chart-card', id: 'chart', 'aria-label': 'Visitors over time' });
  const tables = h('div', { class: 'tables' });
  const empty = h('div', { id: 'empty' });
  const el = h('div', { class: 'overview' }, controls, chips, empty, kpis, chart, tables);

  // --- headline numbers ---
  const kpiCards = () =>
    kpis.replaceChildren(
      ...KPIS.map((k) =>
        h(
        'div',
        { class: 'kpi loading', 'data-metric': k.metric, 'aria-busy': 'true' },
        h('div', { class: 'kpi-label' }, k.label),
        h('div', { class: 'kpi-value' }, '…'),
        h('div', { class: 'kpi-change' }, ''),
        ),
      ),
    );
  const loadKpis = async () => {
    kpiCards();
    try {
      const r = await run({
        ...base,
        metrics: KPIS.map((k) => k.metric),
        ...(state.compare ? { compare: 'previous_period' } : {}),
      });
      if (!alive) return;
      const row = r.results[0];
      const [from, to] = r.query.date_range as [string, string];
      period.textContent = `${from.slice(0, 10)} to ${to.slice(0, 10)}`;
      KPIS.forEach((k, i) => {
        const card = kpis.querySelector<HTMLElement>(`[data-metric="${k.metric}"]`)!;
        const value = Number(row.metrics[i] ?? 0);
        card.classList.remove('loading');
        card.removeAttribute('aria-busy');
        card.dataset.value = String(value);
        card.querySelector('.kpi-value')!.textContent = k.format(value);
        const change = card.querySelector<HTMLElement>('.kpi-change')!;
        if (!state.compare) {
          change.textContent = '';
          return;
        }
        const pct = row.comparison?.change?.[i] as number | null | undefined;
        const before = Number(row.comparison?.metrics?.[i] ?? 0);
        change.dataset.change = pct === null || pct === undefined ? 'none' : String(pct);
        if (pct === null || pct === undefined) {
          change.textContent = before === 0 && value > 0 ? 'new vs previous period' : 'no change data';
          change.className = 'kpi-change flat';
        } else {
          const up = pct > 0;
          const good = pct === 0 ? null : up !== Boolean(k.lowerIsBetter);
          change.textContent = `${pct === 0 ? '±' : up ? '▲' : '▼'} ${Math.abs(pct)}% vs previous period`;
          change.className = `kpi-change ${good === null ? 'flat' : good ? 'good' : 'bad'}`;
        }
      });
      if (Number(row.metrics[0]) === 0 && state.filters.length === 0) void checkEmpty();
    } catch (e) {
      if (!alive) return;
      kpis.replaceChildren(failure('the headline numbers', e, loadKpis));
    }
  };

  // --- the empty state: a project that has never had an event ---
  const checkEmpty = async () => {
    try {
      const r = await query(project.id, { metrics: ['events'], date_range: 'all', timezone: state.timezone }, { track: false });
      if (!alive || Number(r.results[0].metrics[0]) !== 0) return;
      empty.replaceChildren(emptyState(project));
    } catch {
      /* the sections show their own errors */
    }
  };

  // --- time chart ---
  chart.append(h('h2', {}, 'Visitors'), h('p', { class: 'loading-text', 'aria-busy': 'true' }, 'Loading…'));
  const loadChart = async () => {
    try {
      const r = await run({
        ...base,
        metrics: ['visitors'],
        dimensions: ['time'],
        include: { time_labels: true },
        ...(state.compare ? { compare: 'previous_period' } : {}),
      });
      if (!alive) return;
      const rows = r.results as any[];
      const body = h('div', { class: 'plot', role: 'img', 'aria-label': chartSummary(rows, state.compare) });
      chart.replaceChildren(h('h2', {}, 'Visitors'), body);
      if (rows.length === 0) {
        body.append(h('p', { class: 'empty' }, 'No data in this period.'));
        return;
      }
      cleanups.push(
        drawChart(body, {
          labels: rows.map((x) => String(x.dimensions[0])),
          current: rows.map((x) => Number(x.metrics[0])),
          previous: state.compare ? rows.map((x) => Number(x.comparison?.metrics?.[0] ?? 0)) : null,
          metricLabel: 'Visitors',
        }),
      );
    } catch (e) {
      if (!alive) return;
      chart.replaceChildren(h('h2', {}, 'Visitors'), failure('the chart', e, loadChart));
    }
  };

  // --- breakdowns ---
  for (const b of BREAKDOWNS) {
    const card = h(
      'section',
      { class: 'card table-card', id: `table-${b.id}`, 'aria-labelledby': `title-${b.id}` },
      h('h2', { id: `title-${b.id}` }, b.title),
      h('p', { class: 'loading-text', 'aria-busy': 'true' }, 'Loading…'),
    );
    tables.append(card);
    const load = async () => {
      try {
        const r = await run({
          ...base,
          filters: [...base.filters, ...(b.only ?? [])],
          metrics: b.metrics.map((m) => m.metric),
          dimensions: [b.dimension],
          pagination: { limit: 10, offset: 0 },
        });
        if (!alive) return;
        card.replaceChildren(h('h2', { id: `title-${b.id}` }, b.title), breakdownTable(b, r.results, state, go));
      } catch (e) {
        if (!alive) return;
        card.replaceChildren(h('h2', { id: `title-${b.id}` }, b.title), failure(b.title.toLowerCase(), e, load));
      }
    };
    void load();
  }

  // --- live visitors, every 30 s while the page is open ---
  const loadLive = async () => {
    try {
      const r = await run({ kind: 'realtime', minutes: 5 });
      if (!alive) return;
      const n = Number(r.results.visitors ?? 0);
      live.dataset.value = String(n);
      live.textContent = `${n} ${n === 1 ? 'visitor' : 'visitors'} in the last 5 minutes`;
    } catch {
      if (alive) live.textContent = 'Live count unavailable';
    }
  };
  const timer = window.setInterval(() => void loadLive(), 30_000);
  cleanups.push(() => window.clearInterval(timer));

  void loadKpis();
  void loadChart();
  void loadLive();
  void session;

  return {
    el,
    destroy() {
      alive = false;
      for (const c of cleanups) c();
    },
  };
}

function breakdownTable(b: Breakdown, rows: any[], state: ViewState, go: (s: ViewState) => void): HTMLElement {
  if (rows.length === 0) return h('p', { class: 'empty' }, 'No data in this period.');
  const max = Math.max(1, ...rows.map((r) => Number(r.metrics[0])));
  const active = (v: string) => state.filters.some((f) => f.dimension === b.dimension && f.value === v);
  return h(
    'table',
    {},
    h(
      'thead',
      {},
      h('tr', {}, h('th', { scope: 'col' }, b.column), ...b.metrics.map((m) => h('th', { scope: 'col', class: 'num' }, m.label))),
    ),
    h(
      'tbody',
      {},
      ...rows.map((r) => {
        const label = String(r.dimensions[0]);
        const share = (Number(r.metrics[0]) / max) * 100;
        const clickable = label !== '(none)' && !active(label);
        const name = clickable
          ? h(
              'button',
              {
                type: 'button',
                class: 'row-filter',
                title: `Filter by ${b.column.toLowerCase()} ${label}`,
                onclick: () => go({ ...state, filters: [...state.filters, { dimension: b.dimension, value: label }] }),
              },
              label,
            )
          : h('span', {}, label);
        return h(
          'tr',
          { 'data-key': label },
          h('td', { class: 'bar-cell', style: `--share: ${share.toFixed(1)}%` }, name),
          ...r.metrics.map((m: number, i: number) =>
            h('td', { class: 'num', 'data-metric': b.metrics[i].metric, 'data-value': String(m) }, formatNumber(Number(m))),
          ),
        );
      }),
    ),
  );
}

function chartSummary(rows: any[], compare: boolean): string {
  const total = rows.reduce((n, r) => n + Number(r.metrics[0]), 0);
  const peak = rows.reduce((best, r) => (Number(r.metrics[0]) > Number(best?.metrics[0] ?? -1) ? r : best), null as any);
  let text = `Visitors per period bucket, ${rows.length} buckets`;
  if (peak) text += `; highest ${peak.metrics[0]} on ${peak.dimensions[0]}; sum of buckets ${total}`;
  if (compare) text += '; dashed line: the previous period';
  return text;
}

/** The page for a project the user may not see (or that does not exist). */
export function noAccess(projectId: string, session: Session): HTMLElement {
  const first = session.projects[0];
  return h(
    'div',
    { class: 'card error', role: 'alert', id: 'no-access' },
    h('h2', {}, 'No access'),
    h('p', {}, `You (${session.user.email}) cannot see the project “${projectId}”, or it does not exist.`),
    first ? h('a', { href: stateUrl({ project: first.id, range: '28d', from: '', to: '', compare: true, filters: [], timezone: '' }) }, `Open ${first.name}`) : null,
  );
}
