// Tally's dashboard: a login page, the Overview, the Insights and Accounts, on the public
// API. The view is picked from the path (/login, /, /insights/trends, /accounts...) and
// its state from the query string (state.ts).
import './style.css';
import { ApiError, Project, Session, forceNextView, getSession, login, logout, newView } from './api';
import { h } from './dom';
import { accounts } from './accounts';
import { funnel } from './funnel';
import { lifecycle, stickiness } from './lifecycle';
import { noAccess, overview } from './overview';
import { retention } from './retention';
import { Params, ViewState, pageUrl, readState, stateUrl } from './state';
import { trends } from './trends';
import { View, freshness } from './ui';
import { liveEvents } from './events';
import { paths } from './paths';
import { settings } from './settings';
import { people } from './person';

const app = document.getElementById('app')!;
let session: Session | null = null;
let current: View | null = null;
/** The "updated N s ago" line of the view on screen. */
let fresh: { el: HTMLElement; destroy(): void } | null = null;
/** Where a visitor was going when the login page took over: a link opens after login. */
let afterLogin = '/';

type Nav = (s: ViewState, p: Params) => void;
interface Page {
  path: string;
  title: string;
  /** The tab it sits under in the header. */
  tab: string;
  draw: (project: Project, state: ViewState, nav: Nav, session: Session) => View;
  /** Shown in the header to admins only (the server refuses viewers anyway). */
  admin?: boolean;
}

const PAGES: Page[] = [
  { path: '/', title: 'Overview', tab: 'Overview', draw: (p, s, nav, session) => overview(session, p, s, (x) => nav(x, {})) },
  { path: '/insights/trends', title: 'Trends', tab: 'Trends', draw: trends },
  { path: '/insights/funnel', title: 'Funnel', tab: 'Funnel', draw: funnel },
  { path: '/insights/retention', title: 'Retention', tab: 'Retention', draw: retention },
  { path: '/insights/lifecycle', title: 'Lifecycle', tab: 'Lifecycle', draw: lifecycle },
  { path: '/insights/stickiness', title: 'Stickiness', tab: 'Stickiness', draw: stickiness },
  { path: '/insights/paths', title: 'Paths', tab: 'Paths', draw: paths },
  { path: '/accounts', title: 'Accounts', tab: 'Accounts', draw: accounts },
  { path: '/events', title: 'Live events', tab: 'Events', draw: liveEvents },
  { path: '/people', title: 'People', tab: 'People', draw: people },
  { path: '/settings', title: 'Settings', tab: 'Settings', admin: true, draw: (_p, _s, _nav, session) => settings(session, sessionChanged) },
];

/** Settings changed projects or users: read the session again and refill the project
 * switcher in place (drawing the page again would lose the key it just showed). */
async function sessionChanged(): Promise<void> {
  try {
    session = await getSession();
  } catch {
    return;
  }
  const switcher = document.getElementById('project') as HTMLSelectElement | null;
  if (!session || !switcher) return;
  const chosen = switcher.value;
  switcher.replaceChildren(...session.projects.map((p) => h('option', { value: p.id, selected: p.id === chosen }, p.name)));
}

// Links inside the app change the view without a page load.
document.addEventListener('click', (e) => {
  const a = (e.target as Element | null)?.closest?.('a[data-nav]') as HTMLAnchorElement | null;
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute('href')!);
});

function navigate(url: string, replace = false): void {
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  void render();
}

window.addEventListener('popstate', () => void render());

async function render(): Promise<void> {
  current?.destroy();
  current = null;
  fresh?.destroy();
  fresh = null;
  newView();
  if (session === null) {
    try {
      session = await getSession();
    } catch (e) {
      app.replaceChildren(fatal(e));
      return;
    }
  }
  if (session === null) {
    if (location.pathname !== '/login') {
      afterLogin = location.pathname + location.search;
      history.replaceState(null, '', '/login');
    }
    app.replaceChildren(loginPage());
    document.title = 'Log in · Tally';
    return;
  }
  const state = readState();
  if (location.pathname === '/login' || !state.project) {
    const first = session.projects[0];
    if (!first) {
      app.replaceChildren(shell(session, state, h('p', { class: 'card' }, 'You may see no project yet: ask an admin.')));
      return;
    }
    if (location.pathname === '/login') {
      navigate(stateUrl({ ...state, project: state.project || first.id }), true);
    } else {
      // The same page, in the first project.
      const q = new URLSearchParams(location.search);
      q.set('project', first.id);
      if (!q.has('range')) q.set('range', state.range);
      navigate(`${location.pathname}?${q.toString()}`, true);
    }
    return;
  }
  const project = session.projects.find((p) => p.id === state.project);
  if (!project) {
    app.replaceChildren(shell(session, state, noAccess(state.project, session)));
    document.title = 'No access · Tally';
    return;
  }
  if (location.pathname === '/insights' || location.pathname === '/insights/') {
    navigate(pageUrl('/insights/trends', state), true);
    return;
  }
  const page = PAGES.find((p) => p.path === location.pathname);
  if (!page) {
    app.replaceChildren(
      shell(session, state, h('div', { class: 'card error', role: 'alert', id: 'not-found' }, h('h2', {}, 'No such page'), h('a', { href: stateUrl(state), 'data-nav': '' }, 'Open the Overview')), 'Not found'),
    );
    document.title = 'Not found · Tally';
    return;
  }
  const nav: Nav = (s, p) => navigate(pageUrl(page.path, s, p));
  current = page.draw(project, state, nav, session);
  app.replaceChildren(shell(session, state, current.el, page.title));
  document.title = `${page.title} · ${project.name} · Tally`;
}

function shell(s: Session, state: ViewState, content: HTMLElement, title = 'Overview'): HTMLElement {
  // Another project: the same page with its own parameters, without the filters (they
  // name this project's values).
  const switchTo = (project: string) => {
    const q = new URLSearchParams(location.search);
    q.set('project', project);
    q.delete('f');
    navigate(`${location.pathname}?${q.toString()}`);
  };
  const switcher = h(
    'select',
    {
      id: 'project',
      onchange: (e: Event) => switchTo((e.target as HTMLSelectElement).value),
    },
    ...s.projects.map((p) => h('option', { value: p.id, selected: p.id === state.project }, p.name)),
  );
  if (!s.projects.some((p) => p.id === state.project)) {
    switcher.prepend(h('option', { value: '', selected: true, disabled: true }, 'Choose a project'));
  }
  return h(
    'div',
    { class: 'shell' },
    h(
      'header',
      { class: 'top' },
      h('span', { class: 'brand' }, 'Tally'),
      h('label', { for: 'project' }, 'Project'),
      switcher,
      // The tabs keep the project, range, compare and filters; each page's own
      // parameters start afresh.
      h(
        'nav',
        { class: 'tabs', 'aria-label': 'Pages' },
        ...PAGES.filter((p) => !p.admin || s.user.role === 'admin').map((p) =>
          h(
            'a',
            {
              href: pageUrl(p.path, state),
              'data-nav': '',
              id: `tab-${p.tab.toLowerCase()}`,
              'aria-current': p.path === location.pathname ? 'page' : undefined,
            },
            p.tab,
          ),
        ),
      ),
      h('span', { class: 'spacer' }),
      h('span', { class: 'who', id: 'who' }, `${s.user.email} (${s.user.role})`),
      h(
        'button',
        {
          type: 'button',
          id: 'logout',
          onclick: async () => {
            try {
              await logout();
            } finally {
              session = null;
              navigate('/login');
            }
          },
        },
        'Log out',
      ),
    ),
    h('main', { id: 'main' }, h('h1', { class: 'visually-hidden' }, title), freshLine(), content),
  );
}

function freshLine(): HTMLElement {
  fresh?.destroy();
  fresh = freshness(() => {
    forceNextView();
    void render();
  });
  return fresh.el;
}

function loginPage(): HTMLElement {
  const error = h('p', { class: 'error-text', id: 'login-error', role: 'alert' });
  const email = h('input', { id: 'email', name: 'email', type: 'email', autocomplete: 'username', required: true });
  const password = h('input', {
    id: 'password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const submit = h('button', { type: 'submit', id: 'login-submit' }, 'Log in');
  const form = h(
    'form',
    {
      class: 'login card',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        error.textContent = '';
        submit.setAttribute('disabled', '');
        submit.textContent = 'Logging in…';
        try {
          session = await login(email.value, password.value);
          const next = afterLogin;
          afterLogin = '/';
          navigate(next, true);
        } catch (err) {
          error.textContent = err instanceof ApiError ? err.message : String(err);
          submit.removeAttribute('disabled');
          submit.textContent = 'Log in';
          password.select();
        }
      },
    },
    h('h1', {}, 'Log in to Tally'),
    h('label', { for: 'email' }, 'Email'),
    email,
    h('label', { for: 'password' }, 'Password'),
    password,
    submit,
    error,
  );
  return h('main', { class: 'login-page' }, form);
}

function fatal(e: unknown): HTMLElement {
  const message = e instanceof ApiError ? e.message : String(e);
  return h(
    'main',
    { class: 'login-page' },
    h(
      'div',
      { class: 'card error', role: 'alert' },
      h('h1', {}, 'Tally is not answering'),
      h('p', {}, message),
      h('button', { type: 'button', onclick: () => void render() }, 'Retry'),
    ),
  );
}

void render();
