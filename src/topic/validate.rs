//! Topic name and topic filter rules (MQTT 5.0 section 4.7, 4.8.2; the same in 3.1.1).

/// A topic name a client may publish to: non-empty, no wildcards.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#'])
}

/// A topic filter: non-empty; `#` only as the whole last level; `+` only as a whole level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65_535 {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Which configured bound a topic name or filter passes, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicBound {
    Length,
    Levels,
}

/// Checks a topic name or filter against `max_length` bytes and `max_levels` levels (counted
/// without building anything: levels are separators plus one).
pub fn check_topic_bounds(
    topic: &str,
    max_length: usize,
    max_levels: usize,
) -> Result<(), TopicBound> {
    if topic.len() > max_length {
        return Err(TopicBound::Length);
    }
    if topic.bytes().filter(|b| *b == b'/').count() >= max_levels {
        return Err(TopicBound::Levels);
    }
    Ok(())
}

/// A topic a client may not publish to: the broker's own `$SYS` tree.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// `$share/{group}/{filter}` split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

/// A `$share/...` filter that breaks the shared-subscription rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidSharedFilter;

/// `Ok(None)` for an ordinary filter, `Ok(Some)` for a valid shared one, `Err` for a malformed
/// shared one (empty or wildcard group, missing or invalid filter).
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, InvalidSharedFilter> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return if filter == "$share" {
            Err(InvalidSharedFilter)
        } else {
            Ok(None)
        };
    };
    let (group, inner) = rest.split_once('/').ok_or(InvalidSharedFilter)?;
    if group.is_empty() || group.contains(['+', '#']) || !valid_filter(inner) {
        return Err(InvalidSharedFilter);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    #[test]
    fn topic_names() {
        assert!(valid_topic_name("a/b"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("$SYS/x"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a#"));
    }

    #[test]
    fn bounds_on_length_and_levels() {
        assert_eq!(check_topic_bounds("a/b/c", 5, 3), Ok(()));
        assert_eq!(check_topic_bounds("a/b/c", 4, 3), Err(TopicBound::Length));
        assert_eq!(check_topic_bounds("a/b/c", 5, 2), Err(TopicBound::Levels));
        assert_eq!(check_topic_bounds("///", 10, 4), Ok(()));
        assert_eq!(check_topic_bounds("///", 10, 3), Err(TopicBound::Levels));
        assert!(is_sys_topic("$SYS/broker/uptime") && is_sys_topic("$SYS"));
        assert!(!is_sys_topic("$SYSTEM/x") && !is_sys_topic("a/$SYS"));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a//b",
            "+/tennis/#",
            "sport/+/player1",
        ] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b#", "a+", "+a/b", "#/a", "a/+b"] {
            assert!(!valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(
            parse_shared("$share/g/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "#"
            }))
        );
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/a#",
            "$share",
            "$share/g/",
        ] {
            assert!(parse_shared(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_rules_from_the_spec() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }
}
