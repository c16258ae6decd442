//! The MQTT topic scheme: `{root}/v1/gw/{gateway}/{channel}`.
//!
//! The gateway id is a topic level of its own, so a broker ACL can pin a gateway's credential to its
//! own topics (Mosquitto: `pattern write city/v1/gw/%u/#`, `pattern read city/v1/gw/%u/cmd`). The
//! version level lets a future v2 run beside v1 on the same broker.

use std::fmt;

use thiserror::Error;

use crate::id::GatewayId;

/// Default first topic level(s).
pub const DEFAULT_ROOT: &str = "city";

/// The channels of one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Gateway → hub: data envelopes (QoS 1).
    Up,
    /// Gateway → hub: retained presence and inventory; the last will says `offline`.
    State,
    /// Gateway → hub: heartbeats.
    Status,
    /// Hub → gateway: commands (QoS 1).
    Cmd,
    /// Gateway → hub: command replies (QoS 1).
    Reply,
    /// Hub → gateway: configuration pushes (QoS 1).
    Config,
}

impl Channel {
    pub const ALL: [Channel; 6] = [
        Channel::Up,
        Channel::State,
        Channel::Status,
        Channel::Cmd,
        Channel::Reply,
        Channel::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Up => "up",
            Channel::State => "state",
            Channel::Status => "status",
            Channel::Cmd => "cmd",
            Channel::Reply => "reply",
            Channel::Config => "config",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error(
        "topic root {0:?} is invalid: use one or more '/'-separated identifiers, without wildcards"
    )]
    BadRoot(String),
    #[error("topic {topic:?} is not of the form {root}/v1/gw/<gateway>/<channel>")]
    NotOurs { topic: String, root: String },
    #[error("topic {topic:?} names an invalid gateway: {reason}")]
    BadGateway { topic: String, reason: String },
    #[error("topic {topic:?} has unknown channel {channel:?}")]
    UnknownChannel { topic: String, channel: String },
}

/// Builds and parses topics under one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicScheme {
    root: String,
}

impl Default for TopicScheme {
    fn default() -> Self {
        Self {
            root: DEFAULT_ROOT.to_owned(),
        }
    }
}

impl TopicScheme {
    pub fn new(root: &str) -> Result<Self, TopicError> {
        let ok = !root.is_empty()
            && root
                .split('/')
                .all(|level| crate::id::validate("topic level", level).is_ok());
        if !ok {
            return Err(TopicError::BadRoot(root.to_owned()));
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The topic of one gateway's channel.
    pub fn topic(&self, gateway: &GatewayId, channel: Channel) -> String {
        format!("{}/v1/gw/{}/{}", self.root, gateway, channel)
    }

    /// A subscription filter for one channel of every gateway.
    pub fn filter_all(&self, channel: Channel) -> String {
        format!("{}/v1/gw/+/{}", self.root, channel)
    }

    /// Which gateway and channel a topic belongs to.
    pub fn parse(&self, topic: &str) -> Result<(GatewayId, Channel), TopicError> {
        let not_ours = || TopicError::NotOurs {
            topic: topic.to_owned(),
            root: self.root.clone(),
        };
        let rest = topic
            .strip_prefix(self.root.as_str())
            .and_then(|r| r.strip_prefix("/v1/gw/"))
            .ok_or_else(not_ours)?;
        let (gw, ch) = rest.split_once('/').ok_or_else(not_ours)?;
        let gateway = GatewayId::new(gw).map_err(|e| TopicError::BadGateway {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
        let channel = Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == ch)
            .ok_or_else(|| TopicError::UnknownChannel {
                topic: topic.to_owned(),
                channel: ch.to_owned(),
            })?;
        Ok((gateway, channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses() {
        let s = TopicScheme::default();
        let gw = GatewayId::new("gw-01").unwrap();
        let t = s.topic(&gw, Channel::Up);
        assert_eq!(t, "city/v1/gw/gw-01/up");
        assert_eq!(s.parse(&t).unwrap(), (gw, Channel::Up));
        assert_eq!(s.filter_all(Channel::State), "city/v1/gw/+/state");
    }

    #[test]
    fn rejects_foreign_topics() {
        let s = TopicScheme::new("town/a").unwrap();
        assert!(matches!(
            s.parse("city/v1/gw/x/up"),
            Err(TopicError::NotOurs { .. })
        ));
        assert!(matches!(
            s.parse("town/a/v1/gw/x/up/extra"),
            Err(TopicError::BadGateway { .. } | TopicError::UnknownChannel { .. })
        ));
        assert!(matches!(
            s.parse("town/a/v1/gw/x/data"),
            Err(TopicError::UnknownChannel { .. })
        ));
        assert!(matches!(
            s.parse("town/a/v1/gw/a+b/up"),
            Err(TopicError::BadGateway { .. })
        ));
        assert!(TopicScheme::new("city/#").is_err());
        assert!(TopicScheme::new("").is_err());
    }
}
