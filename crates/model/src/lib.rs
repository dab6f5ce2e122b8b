//! Tally's shared data model.
//!
//! Every wire format (ThriveStack, Segment, PostHog) is decoded into one [`Event`]. The
//! ingest layer appends events to the queue as an [`EventBatch`] (one per HTTP request),
//! and the writer reads the same batch on the other side as a [`StoredBatch`]: a view of
//! the record's bytes that builds no maps. The batch encoding is JSON: it is
//! self-describing, survives schema additions (new optional fields default), and is cheap
//! compared with the fsync that follows it.

use std::borrow::Cow;
use std::ops::Deref;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
    /// An event of `kind` named `name` with a new id, at time 0, and nothing else set: a
    /// start for tests and tools (`Event { user_id: ..., ..Event::new(kind, name) }`).
    pub fn new(kind: EventType, name: impl Into<String>) -> Event {
        Event {
            uuid: Uuid::now_v7(),
            kind,
            event: name.into(),
            user_id: None,
            device_id: None,
            session_id: None,
            group_id: None,
            previous_id: None,
            timestamp: 0,
            received_at: 0,
            properties: Map::new(),
            traits: Map::new(),
            context: Map::new(),
        }
    }

    /// The page path of a page view or of an event sent from a page: the `page_path`
    /// (or `path`) property, else the path part of `page_url` (or `url`); failing those,
    /// the same keys in `context.page`, where Segment's browser library puts the page of
    /// every call.
    ///
    /// The writer reads the same rule off a queue record's JSON text
    /// ([`StoredEvent::page_path`]); a test holds the two to the same answers.
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

    /// Runs `f` on this batch as the writer reads it from the queue: for tests and tools
    /// that insert into a store directly.
    pub fn as_stored<R>(&self, f: impl FnOnce(&StoredBatch<'_>) -> R) -> R {
        let bytes = self.encode();
        f(&StoredBatch::decode(&bytes).expect("an encoded batch always decodes"))
    }
}

/// A queue record's [`EventBatch`] as the writer reads it: a view of the record's bytes.
///
/// Strings are borrowed from the record (copied only when they hold JSON escapes), and
/// the three objects stay the JSON text [`EventBatch::encode`] wrote, which is what the
/// stores keep. Decoding one builds no maps: for single-event requests, the maps built and
/// freed again were most of the writer's decoding time.
#[derive(Debug, Deserialize)]
pub struct StoredBatch<'a> {
    #[serde(borrow)]
    pub project_id: Text<'a>,
    #[serde(borrow)]
    pub events: Vec<StoredEvent<'a>>,
}

impl<'a> StoredBatch<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A string of a queue record, borrowed from it unless it had to be unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// One [`Event`] of a [`StoredBatch`]: the same fields, read without building maps.
#[derive(Debug, Deserialize)]
pub struct StoredEvent<'a> {
    pub uuid: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(borrow)]
    pub event: Text<'a>,
    #[serde(default, borrow)]
    pub user_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub device_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub session_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub group_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    pub previous_id: Option<Text<'a>>,
    pub timestamp: i64,
    pub received_at: i64,
    /// The objects' JSON text; absent when the event's map was empty.
    #[serde(default, borrow)]
    pub properties: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub traits: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub context: Option<&'a RawValue>,
}

impl StoredEvent<'_> {
    /// Who "a visitor" is in unique counts: the user id, else the device id, else the
    /// session id; empty when the event has none of them.
    pub fn visitor_id(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.device_id.as_deref())
            .or(self.session_id.as_deref())
            .unwrap_or("")
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

    /// The page stored with the event: [`StoredEvent::page_path`], except for identify,
    /// group and alias calls, which are not on a page.
    pub fn stored_page(&self) -> Option<Cow<'_, str>> {
        match self.kind {
            EventType::Identify | EventType::Group | EventType::Alias => None,
            _ => self.page_path(),
        }
    }

    /// As [`Event::page_path`], reading only the keys it needs from the JSON text.
    pub fn page_path(&self) -> Option<Cow<'_, str>> {
        #[derive(Deserialize)]
        struct Context<'a> {
            #[serde(default, borrow)]
            page: Option<&'a RawValue>,
        }
        let page = self
            .context
            .and_then(|c| serde_json::from_str::<Context<'_>>(c.get()).ok())
            .and_then(|c| c.page);
        for source in [self.properties, page].into_iter().flatten() {
            // Not an object (a context's `page` can be anything): no page there.
            let Ok(keys) = serde_json::from_str::<PageKeys<'_>>(source.get()) else {
                continue;
            };
            if let Some(p) = keys.page_path.or(keys.path).and_then(as_text) {
                return Some(p);
            }
            if let Some(u) = keys.page_url.or(keys.url).and_then(as_text) {
                return Some(match u {
                    Cow::Borrowed(u) => Cow::Borrowed(path_of_url(u)),
                    Cow::Owned(u) => Cow::Owned(path_of_url(&u).to_owned()),
                });
            }
        }
        None
    }

    /// The traits as a map, for the identify and group calls that update them.
    pub fn traits_map(&self) -> Map<String, Value> {
        self.traits
            .and_then(|t| serde_json::from_str(t.get()).ok())
            .unwrap_or_default()
    }
}

/// The keys [`Event::page_path`] reads, each as its JSON text (a `null` too: a key that is
/// there hides its alternative, whatever its value).
#[derive(Deserialize)]
struct PageKeys<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    page_path: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    path: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    page_url: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    url: Option<&'a RawValue>,
}

fn present<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The string a JSON text holds, if it is one.
fn as_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Text<'_>>(raw.get())
        .ok()
        .map(|t| t.0)
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
            properties: properties.as_object().unwrap().clone(),
            context: context.as_object().unwrap().clone(),
            ..Event::new(EventType::Track, "e")
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

    /// The writer's view of a record says what the event it was encoded from says.
    #[test]
    fn stored_event_reads_what_the_event_says() {
        let event =
            |kind, user: Option<&str>, device: Option<&str>, props: Value, ctx: Value| Event {
                user_id: user.map(str::to_owned),
                device_id: device.map(str::to_owned),
                session_id: Some("s1".into()),
                previous_id: Some("d0".into()),
                timestamp: 5,
                received_at: 6,
                properties: props.as_object().unwrap().clone(),
                traits: serde_json::json!({"plan": "pro", "seats": 3})
                    .as_object()
                    .unwrap()
                    .clone(),
                context: ctx.as_object().unwrap().clone(),
                ..Event::new(kind, "say \"hi\"\n")
            };
        use serde_json::json;
        let pages = [
            (json!({}), json!({})),
            (json!({"page_path": "/a", "path": "/b"}), json!({})),
            (json!({"page_path": null, "path": "/b"}), json!({})),
            (
                json!({"page_path": 7, "page_url": "https://x.io/c?q"}),
                json!({}),
            ),
            (json!({"path": "/été \"q\""}), json!({})),
            (json!({"url": "https://x.io/a\\b#f"}), json!({})),
            (
                json!({"plan": "x"}),
                json!({"page": {"url": "https://x.io/docs"}}),
            ),
            (json!({"plan": "x"}), json!({"page": "not an object"})),
            (
                json!({"plan": "x"}),
                json!({"page": {"path": ["/no"]}, "ip": "1.2.3.4"}),
            ),
            (
                json!({"nested": {"page_path": "/deep"}}),
                json!({"page": null}),
            ),
        ];
        let kinds = [
            EventType::Track,
            EventType::Page,
            EventType::Identify,
            EventType::Group,
            EventType::Alias,
        ];
        let ids = [
            (Some("u1"), Some("d1")),
            (None, Some("d1")),
            (Some("u\"1"), None),
            (None, None),
        ];
        for (i, (props, ctx)) in pages.iter().enumerate() {
            for kind in kinds {
                for (user, device) in ids {
                    let e = event(kind, user, device, props.clone(), ctx.clone());
                    let batch = EventBatch {
                        project_id: "p\u{1}".into(),
                        events: vec![e.clone()],
                    };
                    batch.as_stored(|b| {
                        let s = &b.events[0];
                        let case = format!("case {i}, {kind:?}, {user:?}/{device:?}");
                        assert_eq!(&*b.project_id, "p\u{1}", "{case}");
                        assert_eq!(
                            (s.uuid, s.kind, &*s.event),
                            (e.uuid, e.kind, &*e.event),
                            "{case}"
                        );
                        assert_eq!(s.page_path().as_deref(), e.page_path().as_deref(), "{case}");
                        let off_page = matches!(
                            kind,
                            EventType::Identify | EventType::Group | EventType::Alias
                        );
                        let page = e.page_path().filter(|_| !off_page);
                        assert_eq!(s.stored_page().as_deref(), page.as_deref(), "{case}");
                        assert_eq!(s.visitor_id(), user.or(device).unwrap_or("s1"), "{case}");
                        let anonymous = match kind {
                            EventType::Alias => Some("d0"),
                            _ => device,
                        };
                        let link = user.zip(anonymous).filter(|(u, a)| u != a);
                        assert_eq!(s.identity_link(), link, "{case}");
                        assert_eq!(s.traits_map(), e.traits, "{case}");
                        assert_eq!((s.timestamp, s.received_at), (5, 6), "{case}");
                        let text = |m: &Map<String, Value>| {
                            (!m.is_empty()).then(|| serde_json::to_string(m).unwrap())
                        };
                        assert_eq!(
                            s.properties.map(RawValue::get),
                            text(&e.properties).as_deref(),
                            "{case}"
                        );
                        assert_eq!(
                            s.context.map(RawValue::get),
                            text(&e.context).as_deref(),
                            "{case}"
                        );
                    });
                }
            }
        }
    }

    #[test]
    fn batch_round_trips() {
        let mut properties = Map::new();
        properties.insert("plan".into(), Value::from("pro"));
        let batch = EventBatch {
            project_id: "default".into(),
            events: vec![Event {
                user_id: Some("u1".into()),
                timestamp: 1,
                received_at: 2,
                properties,
                ..Event::new(EventType::Track, "signed_up")
            }],
        };
        assert_eq!(EventBatch::decode(&batch.encode()).unwrap(), batch);
    }
}
