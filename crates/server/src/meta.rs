//! Projects, their API keys and the dashboard's users, kept in `<data_dir>/projects.json`.
//!
//! Write keys go into browser pages and apps, so they are public by nature and kept in
//! clear (`tally keys list` shows them). Read keys open the query API and are secret:
//! only their SHA-256 and an 8-character prefix are kept, and the key itself is shown
//! once, when it is made.
//!
//! Users sign in to the dashboard. Their passwords are kept as Argon2id hashes (PHC
//! strings, a random salt each); a viewer sees the projects listed on their record, an
//! admin every project. Sessions are not kept here but in `sessions.json`
//! ([`crate::auth`]): they change on every login, and this file is the CLI's.
//!
//! The file is small and changes rarely (a CLI command), so it is rewritten whole and
//! atomically (temp file, fsync, rename); the server reloads it when its mtime changes.
//! It lives beside the store rather than in it because DuckDB allows one writing process
//! per file, and `tally project create` must work while the server runs.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FILE_NAME: &str = "projects.json";
/// Locked by [`Projects::update`] while the file is read, changed and written.
const LOCK_FILE_NAME: &str = ".projects.lock";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Projects {
    pub projects: Vec<Project>,
    /// Dashboard users; absent in files from before users existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Lower-case; the login name.
    pub email: String,
    pub role: UserRole,
    /// The projects a viewer may see (an admin sees all; kept but unused for admins).
    #[serde(default)]
    pub projects: Vec<String>,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: String,
    /// Bumped by every password change: sessions started before it end.
    #[serde(default)]
    pub password_version: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// Every project, and (later) settings, users and keys.
    Admin,
    /// Reads the reports of their projects, nothing else.
    Viewer,
}

/// What a user looks like outside this file: no password hash.
#[derive(Debug, Clone, Serialize)]
pub struct UserSummary {
    pub email: String,
    pub role: UserRole,
    pub projects: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// URL-safe id derived from the name, unique.
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub write_keys: Vec<String>,
    pub read_keys: Vec<ReadKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReadKey {
    /// The first characters of the key, to tell keys apart in listings.
    pub prefix: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    pub created_at: String,
}

/// Keys made by [`Projects::create_project`]: the only time the read key is visible.
#[derive(Debug, Clone, Serialize)]
pub struct NewProject {
    pub project: String,
    pub write_key: String,
    pub read_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Write,
    Read,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Write => "write",
            KeyKind::Read => "read",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid projects file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("a project named {0:?} already exists")]
    Exists(String),
    #[error("no project {0:?}")]
    NoProject(String),
    #[error("a project name needs at least one letter or digit")]
    BadName,
    #[error("a user {0:?} already exists")]
    UserExists(String),
    #[error("no user {0:?}")]
    NoUser(String),
    #[error("{0:?} is not an email address")]
    BadEmail(String),
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
    #[error("a viewer needs at least one project (--project)")]
    ViewerWithoutProjects,
    #[error("project {project:?} has no {kind} key {key:?}")]
    NoKey {
        project: String,
        kind: &'static str,
        key: String,
    },
    #[error("{0:?} is the last admin; make another admin first")]
    LastAdmin(String),
}

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;

impl Projects {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Reads the file; a missing file is an empty list.
    pub fn load(data_dir: &Path) -> Result<Self, MetaError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| MetaError::Parse { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(MetaError::Io { path, source }),
        }
    }

    /// Writes the file atomically.
    pub fn save(&self, data_dir: &Path) -> Result<(), MetaError> {
        let path = Self::path(data_dir);
        let io = |source| MetaError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let tmp = data_dir.join(format!(".{FILE_NAME}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("projects serialize"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    pub fn create_project(&mut self, name: &str) -> Result<NewProject, MetaError> {
        let id = slug(name).ok_or(MetaError::BadName)?;
        if self.projects.iter().any(|p| p.id == id) {
            return Err(MetaError::Exists(id));
        }
        let write_key = new_key();
        let read_key = new_key();
        self.projects.push(Project {
            id: id.clone(),
            name: name.trim().to_owned(),
            created_at: now(),
            write_keys: vec![write_key.clone()],
            read_keys: vec![read_key_record(&read_key)],
        });
        Ok(NewProject {
            project: id,
            write_key,
            read_key,
        })
    }

    /// Adds a key to a project and returns it.
    pub fn create_key(&mut self, project: &str, kind: KeyKind) -> Result<String, MetaError> {
        let p = self
            .projects
            .iter_mut()
            .find(|p| p.id == project)
            .ok_or_else(|| MetaError::NoProject(project.to_owned()))?;
        let key = new_key();
        match kind {
            KeyKind::Write => p.write_keys.push(key.clone()),
            KeyKind::Read => p.read_keys.push(read_key_record(&key)),
        }
        Ok(key)
    }

    /// Removes a key from a project: a write key by the key itself (write keys are
    /// public), a read key by the prefix listings show. Requests with it are refused from
    /// the server's next key reload on (at once when the server itself revoked it).
    pub fn revoke_key(&mut self, project: &str, kind: KeyKind, key: &str) -> Result<(), MetaError> {
        let p = self
            .projects
            .iter_mut()
            .find(|p| p.id == project)
            .ok_or_else(|| MetaError::NoProject(project.to_owned()))?;
        let removed = match kind {
            KeyKind::Write => {
                let before = p.write_keys.len();
                p.write_keys.retain(|k| k != key);
                before - p.write_keys.len()
            }
            KeyKind::Read => {
                let before = p.read_keys.len();
                // A prefix that names more than one key removes none.
                if p.read_keys.iter().filter(|k| k.prefix == key).count() == 1 {
                    p.read_keys.retain(|k| k.prefix != key);
                }
                before - p.read_keys.len()
            }
        };
        if removed == 0 {
            return Err(MetaError::NoKey {
                project: project.to_owned(),
                kind: kind.name(),
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    /// Removes a user; their sessions end with the record. The last admin stays.
    pub fn remove_user(&mut self, email: &str) -> Result<(), MetaError> {
        let email = normalize_email(email)?;
        let i = self
            .users
            .iter()
            .position(|u| u.email == email)
            .ok_or_else(|| MetaError::NoUser(email.clone()))?;
        let admins = self
            .users
            .iter()
            .filter(|u| u.role == UserRole::Admin)
            .count();
        if self.users[i].role == UserRole::Admin && admins == 1 {
            return Err(MetaError::LastAdmin(email));
        }
        self.users.remove(i);
        Ok(())
    }

    /// Loads the file, applies `change` and saves the result, holding an exclusive lock
    /// on `<data_dir>/.projects.lock` throughout, so that the CLI and the server's
    /// Settings never lose each other's changes. Nothing is saved when `change` fails.
    pub fn update<T>(
        data_dir: &Path,
        change: impl FnOnce(&mut Projects) -> Result<T, MetaError>,
    ) -> Result<(Projects, T), MetaError> {
        let lock_path = data_dir.join(LOCK_FILE_NAME);
        let io = |source| MetaError::Io {
            path: lock_path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        lock.lock().map_err(io)?;
        let mut projects = Self::load(data_dir)?;
        let out = change(&mut projects)?;
        projects.save(data_dir)?;
        // The lock is released when `lock` is dropped.
        Ok((projects, out))
    }

    /// Adds a user. `projects` must exist; a viewer needs at least one.
    pub fn create_user(
        &mut self,
        email: &str,
        role: UserRole,
        projects: &[String],
        password: &str,
    ) -> Result<UserSummary, MetaError> {
        let email = normalize_email(email)?;
        if self.users.iter().any(|u| u.email == email) {
            return Err(MetaError::UserExists(email));
        }
        for p in projects {
            if !self.projects.iter().any(|known| &known.id == p) {
                return Err(MetaError::NoProject(p.clone()));
            }
        }
        if role == UserRole::Viewer && projects.is_empty() {
            return Err(MetaError::ViewerWithoutProjects);
        }
        let user = User {
            email,
            role,
            projects: projects.to_vec(),
            password_hash: hash_password(password)?,
            created_at: now(),
            password_version: 0,
        };
        let summary = user.summary();
        self.users.push(user);
        Ok(summary)
    }

    /// Sets a user's password; their sessions end (the server checks the version).
    pub fn set_password(&mut self, email: &str, password: &str) -> Result<(), MetaError> {
        let email = normalize_email(email)?;
        let hash = hash_password(password)?;
        let user = self
            .users
            .iter_mut()
            .find(|u| u.email == email)
            .ok_or(MetaError::NoUser(email))?;
        user.password_hash = hash;
        user.password_version += 1;
        Ok(())
    }

    /// The lookup tables the server authenticates with.
    pub fn index(&self) -> KeyIndex {
        let mut index = KeyIndex::default();
        for p in &self.projects {
            for k in &p.write_keys {
                index.write.insert(k.clone(), p.id.clone());
            }
            for k in &p.read_keys {
                index.read.insert(k.sha256.clone(), p.id.clone());
            }
        }
        index
    }
}

impl User {
    pub fn summary(&self) -> UserSummary {
        UserSummary {
            email: self.email.clone(),
            role: self.role,
            projects: self.projects.clone(),
            created_at: self.created_at.clone(),
        }
    }

    /// May this user read `project`'s reports?
    pub fn may_see(&self, project: &str) -> bool {
        match self.role {
            UserRole::Admin => true,
            UserRole::Viewer => self.projects.iter().any(|p| p == project),
        }
    }
}

/// Lower-cased and trimmed; refused unless it looks like `name@host`.
pub fn normalize_email(email: &str) -> Result<String, MetaError> {
    let email = email.trim().to_lowercase();
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(name, host)| {
            !name.is_empty() && !host.is_empty() && !host.contains('@')
        });
    if ok {
        Ok(email)
    } else {
        Err(MetaError::BadEmail(email))
    }
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's minimum), a
/// random salt: about 30 ms here, on purpose.
pub fn hash_password(password: &str) -> Result<String, MetaError> {
    use argon2::password_hash::PasswordHasher;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(MetaError::ShortPassword);
    }
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 with default parameters hashes any password")
        .to_string())
}

/// Does `password` match the PHC string `hash`? A malformed hash matches nothing.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{phc::PasswordHash, PasswordVerifier};
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A password for a user the CLI or the first start makes: 16 characters from 96 random
/// bits, URL-safe so it can be pasted anywhere.
pub fn generate_password() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Key → project, for authentication on every request.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    write: HashMap<String, String>,
    read: HashMap<String, String>,
}

impl KeyIndex {
    /// The project and kind of a key, if it is one.
    pub fn lookup(&self, key: &str) -> Option<(&str, KeyKind)> {
        if let Some(p) = self.write.get(key) {
            return Some((p, KeyKind::Write));
        }
        self.read
            .get(&sha256_hex(key))
            .map(|p| (p.as_str(), KeyKind::Read))
    }
}

/// The file's modification time, to notice edits by the CLI.
pub fn modified(data_dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(Projects::path(data_dir))
        .and_then(|m| m.modified())
        .ok()
}

fn read_key_record(key: &str) -> ReadKey {
    ReadKey {
        prefix: key.chars().take(8).collect(),
        sha256: sha256_hex(key),
        created_at: now(),
    }
}

/// 32 random bytes as 44 characters of base64, the shape ThriveStack keys have.
fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `My Shop!` → `my-shop`.
fn slug(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_round_trip_and_keys_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let mut projects = Projects::load(dir.path()).unwrap();
        assert!(projects.projects.is_empty());
        let made = projects.create_project("My Shop!").unwrap();
        assert_eq!(made.project, "my-shop");
        assert_eq!(made.write_key.len(), 44);
        projects.save(dir.path()).unwrap();

        let loaded = Projects::load(dir.path()).unwrap();
        assert_eq!(loaded, projects);
        let raw = std::fs::read_to_string(Projects::path(dir.path())).unwrap();
        assert!(
            !raw.contains(&made.read_key),
            "the read key must not be stored in clear"
        );
        let index = loaded.index();
        assert_eq!(
            index.lookup(&made.write_key),
            Some(("my-shop", KeyKind::Write))
        );
        assert_eq!(
            index.lookup(&made.read_key),
            Some(("my-shop", KeyKind::Read))
        );
        assert_eq!(index.lookup("nope"), None);
    }

    #[test]
    fn duplicate_and_empty_names_are_refused() {
        let mut projects = Projects::default();
        projects.create_project("shop").unwrap();
        assert!(matches!(
            projects.create_project("Shop"),
            Err(MetaError::Exists(_))
        ));
        assert!(matches!(
            projects.create_project("!!"),
            Err(MetaError::BadName)
        ));
        assert!(matches!(
            projects.create_key("none", KeyKind::Read),
            Err(MetaError::NoProject(_))
        ));
    }

    #[test]
    fn users_keep_only_a_hash_and_a_password_change_bumps_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut projects = Projects::default();
        projects.create_project("shop").unwrap();
        projects.create_project("blog").unwrap();
        let made = projects
            .create_user(
                " Ann@Example.com ",
                UserRole::Viewer,
                &["shop".into()],
                "correct horse",
            )
            .unwrap();
        assert_eq!(made.email, "ann@example.com");
        projects.save(dir.path()).unwrap();
        let raw = std::fs::read_to_string(Projects::path(dir.path())).unwrap();
        assert!(
            !raw.contains("correct horse"),
            "the password must not be stored"
        );
        assert!(raw.contains("$argon2id$"), "{raw}");

        let mut loaded = Projects::load(dir.path()).unwrap();
        let ann = loaded.users[0].clone();
        assert!(verify_password(&ann.password_hash, "correct horse"));
        assert!(!verify_password(&ann.password_hash, "correct horsf"));
        assert!(!verify_password("not a phc string", "correct horse"));
        assert!(ann.may_see("shop") && !ann.may_see("blog"));

        loaded
            .set_password("ANN@example.com", "battery staple")
            .unwrap();
        let ann = &loaded.users[0];
        assert_eq!(ann.password_version, 1);
        assert!(verify_password(&ann.password_hash, "battery staple"));
        assert!(!verify_password(&ann.password_hash, "correct horse"));
    }

    #[test]
    fn bad_users_are_refused_with_a_reason() {
        let mut projects = Projects::default();
        projects.create_project("shop").unwrap();
        let err = |r: Result<UserSummary, MetaError>| r.unwrap_err().to_string();
        assert!(
            err(projects.create_user("nope", UserRole::Admin, &[], "12345678")).contains("email")
        );
        assert!(
            err(projects.create_user("a@b", UserRole::Admin, &[], "short"))
                .contains("8 characters")
        );
        assert!(
            err(projects.create_user("a@b", UserRole::Viewer, &[], "12345678"))
                .contains("--project")
        );
        assert!(
            err(projects.create_user("a@b", UserRole::Viewer, &["blog".into()], "12345678"))
                .contains("no project")
        );
        projects
            .create_user("a@b", UserRole::Admin, &[], "12345678")
            .unwrap();
        assert!(
            err(projects.create_user("A@B", UserRole::Admin, &[], "12345678")).contains("already")
        );
        assert!(matches!(
            projects.set_password("x@y", "12345678"),
            Err(MetaError::NoUser(_))
        ));
        assert_eq!(generate_password().len(), 16);
    }

    #[test]
    fn keys_and_users_are_revoked_and_removed_and_the_last_admin_stays() {
        let mut projects = Projects::default();
        let made = projects.create_project("shop").unwrap();
        let second = projects.create_key("shop", KeyKind::Read).unwrap();
        let prefix: String = made.read_key.chars().take(8).collect();
        projects.revoke_key("shop", KeyKind::Read, &prefix).unwrap();
        let index = projects.index();
        assert_eq!(index.lookup(&made.read_key), None);
        assert_eq!(index.lookup(&second), Some(("shop", KeyKind::Read)));
        assert!(matches!(
            projects.revoke_key("shop", KeyKind::Read, &prefix),
            Err(MetaError::NoKey { .. })
        ));
        projects
            .revoke_key("shop", KeyKind::Write, &made.write_key)
            .unwrap();
        assert_eq!(projects.index().lookup(&made.write_key), None);

        projects
            .create_user("a@b", UserRole::Admin, &[], "12345678")
            .unwrap();
        projects
            .create_user("v@b", UserRole::Viewer, &["shop".into()], "12345678")
            .unwrap();
        assert!(matches!(
            projects.remove_user("a@b"),
            Err(MetaError::LastAdmin(_))
        ));
        projects.remove_user("V@b").unwrap();
        assert_eq!(projects.users.len(), 1);
    }

    #[test]
    fn updates_from_two_threads_both_land() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dir = dir.path().to_owned();
                std::thread::spawn(move || {
                    Projects::update(&dir, |p| p.create_project(&format!("p{i}"))).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(Projects::load(dir.path()).unwrap().projects.len(), 8);
        // A failed change saves nothing.
        let before = std::fs::read(Projects::path(dir.path())).unwrap();
        assert!(Projects::update(dir.path(), |p| p.create_project("p1")).is_err());
        assert_eq!(std::fs::read(Projects::path(dir.path())).unwrap(), before);
    }

    #[test]
    fn a_projects_file_from_before_users_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Projects::path(dir.path()), r#"{"projects": []}"#).unwrap();
        assert!(Projects::load(dir.path()).unwrap().users.is_empty());
    }
}
