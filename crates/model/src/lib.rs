//! Tally's shared data model.
//!
//! Every wire format (ThriveStack, Segment, PostHog) is decoded into one [`Event`]. The
//! ingest layer appends events to the queue as an [`EventBatch`] (one per HTTP request),
//! and the writer decodes the same batch on the other side. The batch encoding is JSON:
//! it is self-describing, survives schema additions (new optional fields default), and is
//! cheap compared with the fsync that follows it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A project's id: a short, URL-safe name chosen at creation (`default`, `shop`...).
pub type ProjectId = String;

/// What a call means, following the Segment spec's call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Track,
    Identify,
    Group,
    Page,
    Screen,
    Alias,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Group => "group",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Alias => "alias",
        }
    }
}

/// One normalized event, as stored.
///
/// Times are microseconds since the Unix epoch, UTC. `timestamp` is when the event
/// happened (clock-skew corrected where the wire format allows it); `received_at` is when
/// this server accepted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub uuid: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Event name: the track event's name; `$identify`, `$group`, `$alias` for those
    /// calls; `page_visit` for page calls without a name.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The device or anonymous id that identifies a visitor before they sign in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// For alias calls: the id the user had before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    pub timestamp: i64,
    pub received_at: i64,
    /// Event properties (track/page) — an object.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
    /// Person traits (identify) or group traits (group) — an object.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub traits: Map<String, Value>,
    /// Everything about the sender: library, ip, user agent, page, source...
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub context: Map<String, Value>,
}

impl Event {
    /// Who "a visitor" is in unique counts: the user id, else the device id, else the
    /// session id; empty when the event has none of them.
    pub fn visitor_id(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.device_id.as_deref())
            .or(self.session_id.as_deref())
            .unwrap_or("")
    }

    /// The page stored with the event: [`Event::page_path`], except for identify, group
    /// and alias calls, which are not on a page.
    pub fn stored_page(&self) -> Option<String> {
        match self.kind {
            EventType::Identify | EventType::Group | EventType::Alias => None,
            _ => self.page_path(),
        }
    }

    /// The `(user, anonymous id)` this event links, if any: a device id sent together
    /// with a user id, or an alias call's previous id.
    pub fn identity_link(&self) -> Option<(&str, &str)> {
        let anonymous = match self.kind {
            EventType::Alias => self.previous_id.as_deref(),
            _ => self.device_id.as_deref(),
        }?;
        let user = self.user_id.as_deref()?;
        (user != anonymous).then_some((user, anonymous))
    }

    /// The page path of a page view or of an event sent from a page: the `page_path`
    /// (or `path`) property, else the path part of `page_url` (or `url`); failing those,
    /// the same keys in `context.page`, where Segment's browser library puts the page of
    /// every call.
    pub fn page_path(&self) -> Option<String> {
        let page = match self.context.get("page") {
            Some(Value::Object(page)) => Some(page),
            _ => None,
        };
        for source in [Some(&self.properties), page].into_iter().flatten() {
            if let Some(Value::String(p)) = source.get("page_path").or_else(|| source.get("path")) {
                return Some(p.clone());
            }
            if let Some(Value::String(u)) = source.get("page_url").or_else(|| source.get("url")) {
                return Some(path_of_url(u).to_owned());
            }
        }
        None
    }
}

/// The path of an absolute or relative URL, without query string or fragment.
pub fn path_of_url(url: &str) -> &str {
    let rest = match url.find("://") {
        Some(i) => {
            let after = &url[i + 3..];
            match after.find('/') {
                Some(j) => &after[j..],
                None => "/",
            }
        }
        None => url,
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    if end == 0 {
        "/"
    } else {
        &rest[..end]
    }
}

/// The unit appended to the queue: the events of one request, for one project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub project_id: ProjectId,
    pub events: Vec<Event>,
}

impl EventBatch {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event batch always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_of_url_handles_absolute_relative_and_bare_hosts() {
        assert_eq!(path_of_url("https://a.com/pricing?x=1#top"), "/pricing");
        assert_eq!(path_of_url("https://a.com"), "/");
        assert_eq!(path_of_url("/docs/intro#s"), "/docs/intro");
        assert_eq!(path_of_url("?q=1"), "/");
    }

    #[test]
    fn page_path_reads_properties_then_segment_context_page() {
        let event = |properties: Value, context: Value| Event {
            uuid: Uuid::nil(),
            kind: EventType::Track,
            event: "e".into(),
            user_id: None,
            device_id: None,
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: 0,
            received_at: 0,
            properties: properties.as_object().unwrap().clone(),
            traits: Map::new(),
            context: context.as_object().unwrap().clone(),
        };
        let empty = serde_json::json!({});
        let ctx = serde_json::json!({"page": {"url": "https://a.io/docs?x=1", "path": "/docs"}});
        assert_eq!(
            event(empty.clone(), ctx.clone()).page_path().as_deref(),
            Some("/docs")
        );
        let props = serde_json::json!({"page_url": "https://a.io/pricing"});
        assert_eq!(event(props, ctx).page_path().as_deref(), Some("/pricing"));
        let url_only = serde_json::json!({"page": {"url": "https://a.io/blog/x#top"}});
        assert_eq!(
            event(empty.clone(), url_only).page_path().as_deref(),
            Some("/blog/x")
        );
        assert_eq!(event(empty.clone(), empty).page_path(), None);
    }

    #[test]
    fn batch_round_trips() {
        let mut properties = Map::new();
        properties.insert("plan".into(), Value::from("pro"));
        let batch = EventBatch {
            project_id: "default".into(),
            events: vec![Event {
                uuid: Uuid::nil(),
                kind: EventType::Track,
                event: "signed_up".into(),
                user_id: Some("u1".into()),
                device_id: None,
                session_id: None,
                group_id: None,
                previous_id: None,
                timestamp: 1,
                received_at: 2,
                properties,
                traits: Map::new(),
                context: Map::new(),
            }],
        };
        assert_eq!(EventBatch::decode(&batch.encode()).unwrap(), batch);
    }
}
