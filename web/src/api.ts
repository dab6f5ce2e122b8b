// The dashboard talks to Tally's public API only: login, session, logout, query.
// The session cookie is HttpOnly; the CSRF token from the login answer goes in the
// X-Tally-CSRF header of every POST (docs/dashboard.md).

export interface Project {
  id: string;
  name: string;
  /** Only for admins: for the set-up snippet. */
  write_key: string | null;
}

export interface Session {
  user: { email: string; role: 'admin' | 'viewer' };
  projects: Project[];
  csrf_token: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

let csrf = '';
/** Requests in flight, on <html data-pending>: 0 once the page is fully drawn (the
 * browser test and the load benchmark wait for it). */
let pending = 0;
const setPending = (d: number) => {
  pending += d;
  document.documentElement.dataset.pending = String(pending);
};

async function call(method: 'GET' | 'POST', path: string, body?: unknown): Promise<any> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method === 'POST' && csrf) headers['x-tally-csrf'] = csrf;
  let response: Response;
  let text: string;
  setPending(1);
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    text = await response.text();
  } catch (e) {
    throw new ApiError(0, 'network', 'The server did not answer. Is Tally running?');
  } finally {
    setPending(-1);
  }
  let json: any = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: reported below */
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      json?.error ?? 'http_error',
      json?.message ?? `HTTP ${response.status}`,
    );
  }
  return json;
}

/** The signed-in session, or null when there is none. */
export async function getSession(): Promise<Session | null> {
  const s = await call('GET', '/api/v1/session');
  if (!s?.user) return null;
  csrf = s.csrf_token;
  return s as Session;
}

export async function login(email: string, password: string): Promise<Session> {
  const s = (await call('POST', '/api/v1/login', { email, password })) as Session;
  csrf = s.csrf_token;
  return s;
}

export async function logout(): Promise<void> {
  await call('POST', '/api/v1/logout');
  csrf = '';
}

/** How old one answer on screen is: `at` is when it was computed, on this browser's
 * clock (the time it arrived less the cache block's `age_s`, so a server clock that
 * differs does not matter); `cache` is the block as it came, if it came with one. */
export interface Answer {
  at: number;
  cache: { hit?: boolean; computed_at?: string; data_as_of?: string; age_s?: number; stale?: boolean } | null;
}

/** The answers of the view on screen, by slot (the same question asked again replaces
 * its answer); main.ts empties it when the view changes, ui.ts's freshness line reads it. */
export const answers = new Map<string, Answer>();
let generation = 0;
/** A new view is drawn: the answers of the last one no longer count, even if they
 * arrive late. */
export function newView(): void {
  generation++;
  answers.clear();
}
let forced = -1;
/** The next view asks every question afresh (`"refresh": "force"`): the Refresh button. */
export function forceNextView(): void {
  forced = generation + 1;
}
const listeners = new Set<() => void>();
/** Calls `f` after each answer is recorded; returns the unsubscribe. */
export function onAnswer(f: () => void): () => void {
  listeners.add(f);
  return () => listeners.delete(f);
}

/** POST /api/v1/query for `project` with the session cookie. `slot` names what the
 * answer is drawn as (default: the question itself); `track: false` keeps a helper
 * (event names for a picker) out of the freshness line. */
export async function query(
  project: string,
  body: Record<string, unknown>,
  opts: { slot?: string; track?: boolean } = {},
): Promise<any> {
  const asked = generation;
  const sent = asked === forced ? { ...body, refresh: 'force' } : body;
  const r = await call('POST', `/api/v1/query?project=${encodeURIComponent(project)}`, sent);
  if (opts.track !== false && asked === generation) {
    const cache = r && typeof r.cache === 'object' ? r.cache : null;
    const age = Number(cache?.age_s);
    answers.set(opts.slot ?? `${project} ${JSON.stringify(body)}`, {
      at: Date.now() - (Number.isFinite(age) && age > 0 ? age * 1000 : 0),
      cache,
    });
    for (const f of listeners) f();
  }
  return r;
}

// --- Settings (admins only; docs/dashboard.md) ------------------------------------------

export interface SettingsProject {
  id: string;
  name: string;
  created_at: string;
  write_keys: string[];
  read_keys: { prefix: string; created_at: string }[];
}

export interface SettingsUser {
  email: string;
  role: 'admin' | 'viewer';
  projects: string[];
  created_at: string;
}

export interface Settings {
  projects: SettingsProject[];
  users: SettingsUser[];
}

export const getSettings = (): Promise<Settings> => call('GET', '/api/v1/settings');

export const createProject = (name: string): Promise<{ project: string; write_key: string; read_key: string }> =>
  call('POST', '/api/v1/projects', { name });

export const createKey = (project: string, kind: 'write' | 'read'): Promise<{ key: string; prefix: string }> =>
  call('POST', `/api/v1/projects/${encodeURIComponent(project)}/keys`, { kind });

/** A write key by the key, a read key by its prefix. */
export const revokeKey = (project: string, kind: 'write' | 'read', key: string): Promise<void> =>
  call('POST', `/api/v1/projects/${encodeURIComponent(project)}/keys/revoke`, { kind, key });

export const createUser = (user: {
  email: string;
  role: 'admin' | 'viewer';
  projects: string[];
  password?: string;
}): Promise<{ user: SettingsUser; password: string | null }> => call('POST', '/api/v1/users', user);

export const removeUser = (email: string): Promise<void> => call('POST', '/api/v1/users/remove', { email });
