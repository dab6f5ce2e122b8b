// Tally's dashboard: a login page and the Overview, on the public API. The view is
// picked from the path (/login, /) and its state from the query string (state.ts).
import './style.css';
import { ApiError, Session, getSession, login, logout } from './api';
import { h } from './dom';
import { noAccess, overview, Overview } from './overview';
import { ViewState, readState, stateUrl } from './state';

const app = document.getElementById('app')!;
let session: Session | null = null;
let current: Overview | null = null;

function navigate(url: string, replace = false): void {
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  void render();
}

window.addEventListener('popstate', () => void render());

async function render(): Promise<void> {
  current?.destroy();
  current = null;
  if (session === null) {
    try {
      session = await getSession();
    } catch (e) {
      app.replaceChildren(fatal(e));
      return;
    }
  }
  if (session === null) {
    if (location.pathname !== '/login') history.replaceState(null, '', '/login');
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
    navigate(stateUrl({ ...state, project: state.project || first.id }), true);
    return;
  }
  const project = session.projects.find((p) => p.id === state.project);
  if (!project) {
    app.replaceChildren(shell(session, state, noAccess(state.project, session)));
    document.title = 'No access · Tally';
    return;
  }
  const go = (s: ViewState) => navigate(stateUrl(s));
  current = overview(session, project, state, go);
  app.replaceChildren(shell(session, state, current.el));
  document.title = `${project.name} · Tally`;
}

function shell(s: Session, state: ViewState, content: HTMLElement): HTMLElement {
  const switcher = h(
    'select',
    {
      id: 'project',
      onchange: (e: Event) =>
        navigate(stateUrl({ ...state, project: (e.target as HTMLSelectElement).value, filters: [] })),
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
    h('main', { id: 'main' }, h('h1', { class: 'visually-hidden' }, 'Overview'), content),
  );
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
          navigate('/', true);
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
