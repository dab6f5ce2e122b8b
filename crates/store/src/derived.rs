//! What a batch implies beyond its event rows, the same for every store: people's and
//! accounts' traits merged within the batch, group memberships, and identity links.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tally_model::{EventType, StoredEvent};

/// `(project, id)`.
pub(crate) type Key = (String, String);

/// The merged traits of one person or group within a batch.
pub(crate) struct Traits {
    pub(crate) traits: Map<String, Value>,
    pub(crate) first: i64,
    pub(crate) last: i64,
}

impl Traits {
    fn merge(&mut self, traits: &Map<String, Value>, at: i64) {
        // Later calls win per trait; an earlier call that arrives late only fills gaps.
        for (k, v) in traits {
            if at >= self.last || !self.traits.contains_key(k) {
                self.traits.insert(k.clone(), v.clone());
            }
        }
        self.first = self.first.min(at);
        self.last = self.last.max(at);
    }
}

#[derive(Default)]
pub(crate) struct Derived {
    pub(crate) persons: HashMap<Key, Traits>,
    pub(crate) groups: HashMap<Key, Traits>,
    /// `(project, group, user)` -> (first seen, last seen).
    pub(crate) members: HashMap<(String, String, String), (i64, i64)>,
    /// project -> device -> (user, first time seen together): the earliest link wins.
    /// Nested so that a device seen again is found by `&str`, without allocating.
    pub(crate) links: HashMap<String, HashMap<String, (String, i64)>>,
}

impl Derived {
    /// Takes in what `e` implies. `known_link(project, device)` tells which devices the
    /// store has already linked, so they are skipped.
    pub(crate) fn add(
        &mut self,
        project: &str,
        e: &StoredEvent<'_>,
        known_link: impl Fn(&str, &str) -> bool,
    ) {
        if let Some((user, device)) = e.identity_link() {
            if !known_link(project, device) {
                let devices = match self.links.get_mut(project) {
                    Some(d) => d,
                    None => self.links.entry(project.to_owned()).or_default(),
                };
                match devices.get_mut(device) {
                    Some(link) if e.timestamp < link.1 => *link = (user.to_owned(), e.timestamp),
                    Some(_) => {}
                    None => {
                        devices.insert(device.to_owned(), (user.to_owned(), e.timestamp));
                    }
                }
            }
        }
        let merge = |into: &mut HashMap<Key, Traits>, id: &str| {
            into.entry((project.to_owned(), id.to_owned()))
                .or_insert_with(|| Traits {
                    traits: Map::new(),
                    first: e.timestamp,
                    last: e.timestamp,
                })
                .merge(&e.traits_map(), e.timestamp);
        };
        match (e.kind, e.user_id.as_deref(), e.group_id.as_deref()) {
            (EventType::Identify, Some(user), _) => merge(&mut self.persons, user),
            (EventType::Group, user, Some(group)) => {
                merge(&mut self.groups, group);
                if let Some(user) = user {
                    let key = (project.to_owned(), group.to_owned(), user.to_owned());
                    let seen = self
                        .members
                        .entry(key)
                        .or_insert((e.timestamp, e.timestamp));
                    seen.0 = seen.0.min(e.timestamp);
                    seen.1 = seen.1.max(e.timestamp);
                }
            }
            _ => {}
        }
    }

    /// The projects with people, accounts, memberships or links to write.
    pub(crate) fn projects(&self) -> std::collections::BTreeSet<String> {
        let persons = self.persons.keys().map(|(p, _)| p);
        let groups = self.groups.keys().map(|(p, _)| p);
        let members = self.members.keys().map(|(p, _, _)| p);
        let links = self
            .links
            .iter()
            .filter(|(_, devices)| !devices.is_empty())
            .map(|(p, _)| p);
        persons
            .chain(groups)
            .chain(members)
            .chain(links)
            .cloned()
            .collect()
    }

    /// Every link as `(project, device, user, linked at)`.
    pub(crate) fn links(&self) -> impl Iterator<Item = (&str, &str, &str, i64)> {
        self.links.iter().flat_map(|(project, devices)| {
            devices.iter().map(move |(device, (user, at))| {
                (project.as_str(), device.as_str(), user.as_str(), *at)
            })
        })
    }
}
