//! Access control in mosquitto's `acl_file` syntax: `topic [read|write|readwrite|deny] FILTER`
//! lines before any `user` line apply to anonymous clients, the ones after `user NAME` to that
//! user, and `pattern [access] FILTER` lines to every client, with `%c` standing for its client
//! id and `%u` for its user name. With a file, what no rule grants is refused, and `deny` wins
//! over every grant. A publish needs write access to its topic; a subscription needs read
//! access covering its whole filter; a message is delivered only to clients with read access
//! to its topic (so `deny` also holds inside a wider grant such as `#`).

use std::collections::HashMap;

use crate::topic::matches;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    fn grants(self, write: bool) -> bool {
        match self {
            Access::ReadWrite => true,
            Access::Read => !write,
            Access::Write => write,
            Access::Deny => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// What a client wants to do, and on what.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// PUBLISH (or a will) to this topic.
    Publish(&'a str),
    /// SUBSCRIBE to this filter (the filter inside `$share/{group}/`).
    Subscribe(&'a str),
    /// Receive a message on this topic.
    Receive(&'a str),
}

impl Acl {
    /// Parses an ACL file; an unknown line is an error naming its line number.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}", i + 1);
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(bad("`user` needs a name"));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    // As mosquitto: `topic FILTER` alone means readwrite; an access word
                    // must be followed by a filter (`topic deny` alone is an error, not a
                    // grant on a topic named `deny`).
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((word, filter)) if Access::parse(word).is_some() => {
                            (Access::parse(word).expect("checked"), filter.trim())
                        }
                        None if Access::parse(rest).is_some() => {
                            return Err(bad(&format!("`{keyword} {rest}` names no topic filter")));
                        }
                        _ => (Access::ReadWrite, rest),
                    };
                    if filter.is_empty() {
                        return Err(bad("a topic filter is missing"));
                    }
                    let rule = Rule {
                        access,
                        filter: filter.to_string(),
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => return Err(bad(&format!("unknown keyword `{other}`"))),
            }
        }
        Ok(acl)
    }

    /// Whether the client (`user`, None when anonymous) may do `action`.
    pub fn allows(&self, user: Option<&str>, client_id: &str, action: Action<'_>) -> bool {
        self.rules_for(user, client_id).allows(action)
    }

    /// Whether the file has `user` sections: rules that only a verified user name may select.
    pub fn has_user_sections(&self) -> bool {
        !self.users.is_empty()
    }

    /// The rules that apply to one client, its patterns filled in. `user` must be a name
    /// something verified (a password, a certificate): an unverified name is anonymous.
    ///
    /// A client id or user name is data, never part of a filter: where the value put in for
    /// `%c` or `%u` is empty, holds `+`, `#` or `/` (which would widen the filter or reach into
    /// another level, mosquitto's CVE-2017-7650) or starts with `$` (which would make it a
    /// `$SYS` or `$share` filter), a granting pattern grants that client nothing and a `deny`
    /// pattern denies it everything. Both are put in in one pass: a client id `%u` stays
    /// `%u`, never becoming the user name.
    pub fn rules_for(&self, user: Option<&str>, client_id: &str) -> ClientRules {
        let own = match user {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous[..],
        };
        let mut deny_all = false;
        let patterns = self.patterns.iter().filter_map(|r| {
            let names_user = r.filter.contains("%u");
            let names_client = r.filter.contains("%c");
            // A pattern naming the user name applies to clients that have one.
            if names_user && user.is_none() {
                return None;
            }
            let unsafe_value = (names_client && !safe_level(client_id))
                || (names_user && !user.is_some_and(safe_level));
            if unsafe_value {
                deny_all |= r.access == Access::Deny;
                return None;
            }
            let filter = substitute(&r.filter, client_id, user.unwrap_or(""));
            Some(Rule {
                access: r.access,
                filter,
            })
        });
        let rules = own.iter().cloned().chain(patterns).collect();
        ClientRules { rules, deny_all }
    }
}

/// Whether a client id or user name can stand for exactly one ordinary topic level.
fn safe_level(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/']) && !value.starts_with('$')
}

/// `pattern` with `%c` and `%u` replaced by `client_id` and `user`, in one pass (what is put
/// in is never read again for another `%`).
fn substitute(pattern: &str, client_id: &str, user: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(next) = after.chars().next() else {
            out.push('%');
            rest = after;
            break;
        };
        match next {
            'c' => out.push_str(client_id),
            'u' => out.push_str(user),
            other => {
                out.push('%');
                out.push(other);
            }
        }
        rest = &after[next.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// The rules of one client, resolved once (a connection keeps them until the ACL is reloaded),
/// so checking a delivery allocates nothing.
#[derive(Debug)]
pub struct ClientRules {
    rules: Vec<Rule>,
    /// A `deny` pattern could not be filled in safely: everything is refused.
    deny_all: bool,
}

impl ClientRules {
    pub fn allows(&self, action: Action<'_>) -> bool {
        if self.deny_all {
            return false;
        }
        let write = matches!(action, Action::Publish(_));
        let applies = |rule: &Rule| match action {
            Action::Subscribe(f) => covers(&rule.filter, f),
            Action::Publish(t) | Action::Receive(t) => matches(&rule.filter, t),
        };
        if self
            .rules
            .iter()
            .any(|r| r.access == Access::Deny && applies(r))
        {
            return false;
        }
        self.rules
            .iter()
            .any(|r| r.access.grants(write) && applies(r))
    }
}

/// Whether every topic `filter` matches is also matched by `rule` (a subscription inside a
/// grant). Levels compare one by one: `#` in the rule covers the rest, `+` covers one level
/// (a name or `+`), a name covers only itself.
fn covers(rule: &str, filter: &str) -> bool {
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "
# anonymous clients may read the public tree
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret/#
topic write cmd/alice

user bob
topic #
topic deny test/nosubscribe

pattern readwrite clients/%c/#
pattern read users/%u/inbox
";

    fn acl() -> Acl {
        Acl::parse(FILE).unwrap()
    }

    #[test]
    fn grants_follow_the_user_and_deny_wins() {
        let a = acl();
        let alice = |action| a.allows(Some("alice"), "c1", action);
        assert!(alice(Action::Publish("sensors/t1")));
        assert!(alice(Action::Subscribe("sensors/+/temp")));
        assert!(!alice(Action::Subscribe("#")), "not covered by any grant");
        assert!(!alice(Action::Publish("sensors/secret/key")), "deny wins");
        assert!(!alice(Action::Receive("sensors/secret/key")));
        assert!(!alice(Action::Subscribe("sensors/secret/#")));
        assert!(alice(Action::Publish("cmd/alice")));
        assert!(!alice(Action::Subscribe("cmd/alice")), "write only");
        assert!(
            !alice(Action::Publish("public/news")),
            "anonymous rules are not hers"
        );
        // bob may do anything but subscribe to test/nosubscribe (the paho suites' case).
        let bob = |action| a.allows(Some("bob"), "c2", action);
        assert!(bob(Action::Subscribe("#")));
        assert!(bob(Action::Publish("anything/at/all")));
        assert!(!bob(Action::Subscribe("test/nosubscribe")));
        assert!(!bob(Action::Receive("test/nosubscribe")));
    }

    #[test]
    fn anonymous_rules_and_patterns() {
        let a = acl();
        assert!(a.allows(None, "anon", Action::Subscribe("public/#")));
        assert!(!a.allows(None, "anon", Action::Publish("public/x")));
        // %c: every client has its own tree, anonymous ones included.
        assert!(a.allows(None, "anon", Action::Publish("clients/anon/state")));
        assert!(!a.allows(None, "anon", Action::Publish("clients/other/state")));
        // %u: only clients with a user name.
        assert!(a.allows(Some("carol"), "c3", Action::Subscribe("users/carol/inbox")));
        assert!(!a.allows(None, "c3", Action::Subscribe("users//inbox")));
        // A user with no lines of their own gets only the patterns.
        assert!(!a.allows(Some("carol"), "c3", Action::Publish("sensors/t1")));
    }

    #[test]
    fn client_ids_and_user_names_are_never_part_of_a_filter() {
        let a = acl();
        // The attack of CVE-2017-7650: client id `+` subscribing to `clients/+/#`.
        for id in ["+", "#", "a/b", "x/+", ""] {
            let rules = a.rules_for(None, id);
            assert!(
                !rules.allows(Action::Subscribe("clients/+/#")),
                "client id {id:?}"
            );
            assert!(!rules.allows(Action::Receive("clients/victim/secret")));
            assert!(!rules.allows(Action::Receive("clients/a/b")));
            assert!(!rules.allows(Action::Publish("clients/a/b/x")));
            // What is not a pattern still holds for them.
            assert!(rules.allows(Action::Subscribe("public/#")));
        }
        // The control: an ordinary id gets its own tree and only that.
        let plain = a.rules_for(None, "a");
        assert!(plain.allows(Action::Subscribe("clients/a/#")));
        assert!(!plain.allows(Action::Subscribe("clients/+/#")));
        // %u likewise.
        for user in ["+", "#", "a/b"] {
            let rules = a.rules_for(Some(user), "c9");
            assert!(
                !rules.allows(Action::Subscribe("users/+/inbox")),
                "{user:?}"
            );
            assert!(!rules.allows(Action::Receive("users/carol/inbox")));
        }
        assert!(a.allows(Some("carol"), "c9", Action::Receive("users/carol/inbox")));
        // Put in once: a client id `%u` is not the user name, and `$SYS` is no level.
        let both = Acl::parse("pattern readwrite t/%c/%u/#\n").unwrap();
        assert!(both.allows(Some("gw"), "dev", Action::Publish("t/dev/gw/x")));
        assert!(!both.allows(Some("gw"), "%u", Action::Publish("t/gw/gw/x")));
        assert!(both.allows(Some("gw"), "%u", Action::Publish("t/%u/gw/x")));
        let sys = Acl::parse("pattern read %c/#\n").unwrap();
        assert!(!sys.allows(None, "$SYS", Action::Subscribe("$SYS/#")));
        assert!(sys.allows(None, "dev", Action::Subscribe("dev/#")));
        assert_eq!(substitute("a%b%", "c", "u"), "a%b%");
        assert_eq!(substitute("a/%é/%c/#", "dev", "u"), "a/%é/dev/#");
        // A deny pattern that cannot be filled in safely denies everything.
        let deny = Acl::parse("topic readwrite #\npattern deny private/%c/#\n").unwrap();
        assert!(deny.allows(None, "ok", Action::Publish("x")));
        assert!(!deny.allows(None, "ok", Action::Publish("private/ok/x")));
        assert!(!deny.allows(None, "+", Action::Publish("x")));
        assert!(!deny.allows(None, "+", Action::Subscribe("$SYS/#")));
    }

    #[test]
    fn an_access_word_alone_is_an_error_as_in_mosquitto() {
        for line in [
            "topic deny",
            "topic read",
            "pattern write",
            "topic readwrite ",
        ] {
            let e = Acl::parse(line).unwrap_err();
            assert!(e.starts_with("line 1"), "{line}: {e}");
        }
        // A filter after the word, or a filter alone (readwrite), as before.
        let a = Acl::parse("topic deny a/b\ntopic c/d\n").unwrap();
        assert!(!a.allows(None, "x", Action::Publish("a/b")));
        assert!(a.allows(None, "x", Action::Publish("c/d")));
        assert!(!a.allows(None, "x", Action::Publish("deny")));
    }

    #[test]
    fn coverage_of_a_subscription_by_a_grant() {
        assert!(covers("a/#", "a/b/c"));
        assert!(covers("a/#", "a/+/#"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(covers("#", "#"));
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let e = Acl::parse("user\n").unwrap_err();
        assert!(e.starts_with("line 1"), "{e}");
        let e = Acl::parse("topic read a\nallow all\n").unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
    }
}
