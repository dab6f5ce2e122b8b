// Settings, for admins: projects and their keys (make, revoke), the tracker snippet, and
// the users (make, remove). Everything goes through /api/v1/settings and its POST routes,
// which refuse viewers too (crates/server/src/settings.rs): the page only mirrors that.
// A key or password the server makes is shown once, in a notice, as the CLI does.
//
// URL: /settings?project=shop (the project only keeps the header's switcher in place)
import {
  ApiError,
  Session,
  Settings,
  SettingsProject,
  createKey,
  createProject,
  createUser,
  getSettings,
  removeUser,
  revokeKey,
} from './api';
import { h } from './dom';
import { View, failure, loading } from './ui';

/** `changed` is called after every change, so the header's project list follows. */
export function settings(session: Session, changed: () => Promise<void>): View {
  const notice = h('div', { id: 'settings-notice', role: 'status', 'aria-live': 'polite' });
  const body = h('div', { id: 'settings-body' }, loading());
  const el = h('div', { class: 'settings-page' }, notice, body);
  let alive = true;

  if (session.user.role !== 'admin') {
    body.replaceChildren(refused(`${session.user.email} is a viewer; settings, keys and users are for admins.`));
    return { el, destroy() {} };
  }

  /** Shows what the server made, once, with what to do with it. */
  const show = (title: string, lines: [string, string][], hint: string) => {
    notice.replaceChildren(
      h(
        'section',
        { class: 'card notice', 'aria-labelledby': 'notice-title' },
        h('h2', { id: 'notice-title' }, title),
        ...lines.map(([label, value]) => h('p', {}, `${label}: `, h('code', { class: 'secret' }, value))),
        h('p', {}, hint),
        h('button', { type: 'button', id: 'notice-close', onclick: () => notice.replaceChildren() }, 'Done'),
      ),
    );
  };
  const problem = (e: unknown) => {
    notice.replaceChildren(
      h('div', { class: 'card error', role: 'alert', id: 'settings-error' }, e instanceof ApiError ? e.message : String(e)),
    );
  };
  /** Runs a change, then draws the page again from the server's answer. */
  const act = async (change: () => Promise<void>) => {
    try {
      await change();
    } catch (e) {
      problem(e);
      return;
    }
    await changed();
    await load();
  };

  async function load(): Promise<void> {
    let s: Settings;
    try {
      s = await getSettings();
    } catch (e) {
      if (!alive) return;
      body.replaceChildren(
        e instanceof ApiError && e.status === 403 ? refused(e.message) : failure('the settings', e, () => void load()),
      );
      return;
    }
    if (!alive) return;
    body.replaceChildren(projectsCard(s), ...s.projects.map((p) => projectCard(p)), usersCard(s));
  }

  function projectsCard(s: Settings): HTMLElement {
    const name = h('input', { id: 'new-project-name', name: 'name', required: true, placeholder: 'My shop' });
    return h(
      'section',
      { class: 'card', id: 'settings-projects', 'aria-labelledby': 'projects-title' },
      h('h2', { id: 'projects-title' }, 'Projects'),
      h(
        'ul',
        { class: 'plain' },
        ...s.projects.map((p) => h('li', {}, h('a', { href: `#project-${p.id}` }, p.name), ` (${p.id}), created ${p.created_at.slice(0, 10)}`)),
      ),
      h(
        'form',
        {
          class: 'inline-form',
          id: 'new-project',
          onsubmit: (e: Event) => {
            e.preventDefault();
            void act(async () => {
              const made = await createProject(name.value);
              show(
                `Project ${made.project} created`,
                [
                  ['Write key', made.write_key],
                  ['Read key', made.read_key],
                ],
                'The read key opens the query API and is shown only now: keep it. The write key goes into your pages and apps; it stays listed below.',
              );
            });
          },
        },
        h('label', { for: 'new-project-name' }, 'New project'),
        name,
        h('button', { type: 'submit', id: 'new-project-submit' }, 'Create project'),
      ),
    );
  }

  function projectCard(p: SettingsProject): HTMLElement {
    const newKey = (kind: 'write' | 'read') =>
      h(
        'button',
        {
          type: 'button',
          id: `new-${kind}-key-${p.id}`,
          onclick: () =>
            void act(async () => {
              const made = await createKey(p.id, kind);
              show(
                `New ${kind} key for ${p.name}`,
                [[kind === 'write' ? 'Write key' : 'Read key', made.key]],
                kind === 'read' ? 'Shown only now: keep it. The list shows its first characters.' : 'It is listed below too.',
              );
            }),
        },
        `New ${kind} key`,
      );
    const rows = [
      ...p.write_keys.map((k) => ({ kind: 'write' as const, shown: k, id: k, created: '' })),
      ...p.read_keys.map((k) => ({ kind: 'read' as const, shown: `${k.prefix}…`, id: k.prefix, created: k.created_at.slice(0, 10) })),
    ];
    const key = p.write_keys[0] ?? 'WRITE_KEY';
    const snippet = `<script src="${location.origin}/js/tally.js" data-api-key="${key}" defer></script>`;
    return h(
      'section',
      { class: 'card', id: `project-${p.id}`, 'aria-labelledby': `project-title-${p.id}` },
      h('div', { class: 'card-head' }, h('h2', { id: `project-title-${p.id}` }, `${p.name} (${p.id})`), newKey('write'), newKey('read')),
      rows.length === 0
        ? h('p', { class: 'empty' }, 'No keys: events and queries for this project are refused until you make one.')
        : h(
            'table',
            { class: 'keys', id: `keys-${p.id}` },
            h('caption', { class: 'visually-hidden' }, `Keys of ${p.name}`),
            h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Kind'), h('th', { scope: 'col' }, 'Key'), h('th', { scope: 'col' }, 'Created'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Revoke')))),
            h(
              'tbody',
              {},
              ...rows.map((r) =>
                h(
                  'tr',
                  { 'data-kind': r.kind, 'data-key': r.id },
                  h('td', {}, r.kind),
                  h('td', {}, h('code', {}, r.shown)),
                  h('td', {}, r.created || '–'),
                  h('td', {}, confirmButton(`Revoke ${r.kind} key ${r.shown}`, 'Revoke', () => act(() => revokeKey(p.id, r.kind, r.id)))),
                ),
              ),
            ),
          ),
      h('p', {}, 'Tracker snippet, before </body>:'),
      h('pre', {}, h('code', { class: 'snippet', id: `snippet-${p.id}` }, snippet)),
    );
  }

  function usersCard(s: Settings): HTMLElement {
    const email = h('input', { id: 'new-user-email', type: 'email', required: true, autocomplete: 'off' });
    const role = h(
      'select',
      { id: 'new-user-role' },
      h('option', { value: 'viewer' }, 'viewer: reports of the projects ticked'),
      h('option', { value: 'admin' }, 'admin: every project, settings'),
    );
    const boxes = s.projects.map((p) => h('input', { type: 'checkbox', id: `new-user-project-${p.id}`, value: p.id }));
    const password = h('input', { id: 'new-user-password', type: 'password', autocomplete: 'new-password', minlength: 8 });
    const me = session.user.email;
    return h(
      'section',
      { class: 'card', id: 'settings-users', 'aria-labelledby': 'users-title' },
      h('h2', { id: 'users-title' }, 'Users'),
      h(
        'table',
        { id: 'users-table' },
        h('caption', { class: 'visually-hidden' }, 'Users'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Email'), h('th', { scope: 'col' }, 'Role'), h('th', { scope: 'col' }, 'Projects'), h('th', { scope: 'col' }, 'Created'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Remove')))),
        h(
          'tbody',
          {},
          ...s.users.map((u) =>
            h(
              'tr',
              { 'data-email': u.email },
              h('td', {}, u.email),
              h('td', {}, u.role),
              h('td', {}, u.role === 'admin' ? 'all' : u.projects.join(', ')),
              h('td', {}, u.created_at.slice(0, 10)),
              h('td', {}, u.email === me ? '(you)' : confirmButton(`Remove ${u.email}`, 'Remove', () => act(() => removeUser(u.email)))),
            ),
          ),
        ),
      ),
      h(
        'form',
        {
          class: 'user-form',
          id: 'new-user',
          onsubmit: (e: Event) => {
            e.preventDefault();
            void act(async () => {
              const made = await createUser({
                email: email.value,
                role: role.value as 'admin' | 'viewer',
                projects: role.value === 'admin' ? [] : boxes.filter((b) => b.checked).map((b) => b.value),
                password: password.value || undefined,
              });
              show(
                `User ${made.user.email} created`,
                made.password ? [['Password', made.password]] : [],
                made.password ? 'Shown only now: hand it over safely.' : 'They log in with the password you chose.',
              );
            });
          },
        },
        h('h3', {}, 'New user'),
        h('label', { for: 'new-user-email' }, 'Email'),
        email,
        h('label', { for: 'new-user-role' }, 'Role'),
        role,
        h(
          'fieldset',
          {},
          h('legend', {}, 'Projects a viewer may see'),
          ...s.projects.flatMap((p, i) => [boxes[i], h('label', { for: `new-user-project-${p.id}` }, p.name)]),
        ),
        h('label', { for: 'new-user-password' }, 'Password (empty: one is generated)'),
        password,
        h('button', { type: 'submit', id: 'new-user-submit' }, 'Create user'),
      ),
    );
  }

  void load();
  return {
    el,
    destroy() {
      alive = false;
    },
  };
}

/** A button that asks once more before it acts: the first click arms it. */
function confirmButton(label: string, text: string, action: () => Promise<void>): HTMLElement {
  let armed = false;
  const b: HTMLButtonElement = h(
    'button',
    {
      type: 'button',
      class: 'danger',
      'aria-label': label,
      onclick: () => {
        if (!armed) {
          armed = true;
          b.textContent = `Confirm ${text.toLowerCase()}`;
          b.setAttribute('aria-label', `Confirm: ${label}`);
          return;
        }
        b.setAttribute('disabled', '');
        void action();
      },
    },
    text,
  );
  return b;
}

function refused(message: string): HTMLElement {
  return h('div', { class: 'card error', role: 'alert', id: 'settings-refused' }, h('h2', {}, 'Settings are for admins'), h('p', {}, message));
}
