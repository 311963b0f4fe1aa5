//! `[[rule]]` and `[default]`: matchers, actions, reply templates, checked and turned
//! into the core's rules. Pure: program paths are resolved later, by `Config::load`.

use std::path::Path;
use std::sync::Arc;

use super::defaults;
use super::raw::{OneOrMany, RawAction, RawMatcher, RawRule};
use crate::core::reply::Reply;
use crate::core::rules::{
    did_you_mean, Action, Matcher, Program, Rule, Template, TemplateReply, DOCUMENTED_MSG_TYPES,
    KNOWN_EVENTS,
};

/// Where problems and warnings go while checking, and the folder programs run in.
pub(super) struct Check<'a> {
    pub(super) problems: &'a mut Vec<String>,
    pub(super) warnings: &'a mut Vec<String>,
    pub(super) base: &'a Path,
}

/// What a rule's templates may use besides from/to/content/scene: regex captures.
#[derive(Default)]
struct TemplateVars {
    groups: usize,
    names: Vec<String>,
}

/// The label a rule's problems start with: `rule[3]` or `rule[3] (weather)`.
pub(super) fn rule_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("rule[{index}] ({name})"),
        None => format!("rule[{index}]"),
    }
}

impl RawRule {
    /// Check rule number `index`; `None` when it has a problem (recorded in `check`).
    pub(super) fn validate(self, index: usize, check: &mut Check<'_>) -> Option<Rule> {
        let label = rule_label(index, self.name.as_deref());
        let name: Arc<str> = self
            .name
            .clone()
            .unwrap_or_else(|| format!("rule[{index}]"))
            .into();
        let (key, ignore_case) = (self.key.clone(), self.ignore_case);
        let (matchers, action) = self.split();
        let before = check.problems.len();
        let mut vars = TemplateVars::default();
        let matcher = match <[RawMatcher; 1]>::try_from(matchers) {
            Ok([one]) => {
                if key.is_some() && !matches!(one, RawMatcher::Event(_)) {
                    check
                        .problems
                        .push(format!("{label}.key: only goes with `event`"));
                }
                if ignore_case.is_some()
                    && matches!(one, RawMatcher::Event(_) | RawMatcher::MsgType(_))
                {
                    check.problems.push(format!(
                        "{label}.ignore_case: only goes with text, contains, prefix or regex"
                    ));
                }
                matcher(
                    one,
                    key,
                    ignore_case.unwrap_or(false),
                    &label,
                    &mut vars,
                    check,
                )
            }
            Err(given) if given.is_empty() => {
                check.problems.push(format!(
                    "{label}: matches nothing; give it text, contains, prefix, regex, event or msg_type"
                ));
                None
            }
            Err(given) => {
                let keys: Vec<&str> = given.iter().map(RawMatcher::key).collect();
                check.problems.push(format!(
                    "{label}: has {}; a rule matches one thing",
                    keys.join(" and ")
                ));
                return None;
            }
        };
        let action = action.validate(&label, &vars, check);
        if check.problems.len() > before {
            return None;
        }
        Some(Rule {
            name,
            matcher: matcher?,
            action: action?,
        })
    }
}

/// Check one matcher and build it.
fn matcher(
    raw: RawMatcher,
    key: Option<String>,
    ignore_case: bool,
    label: &str,
    vars: &mut TemplateVars,
    check: &mut Check<'_>,
) -> Option<Matcher> {
    let mut words = |name: &str, list: OneOrMany| -> Vec<String> {
        let words: Vec<String> = list
            .into_vec()
            .into_iter()
            .map(|w| {
                if ignore_case {
                    w.trim().to_lowercase()
                } else {
                    w.trim().to_owned()
                }
            })
            .collect();
        if words.is_empty() || words.iter().any(String::is_empty) {
            check.problems.push(format!(
                "{label}.{name}: needs at least one non-empty string"
            ));
        }
        words
    };
    Some(match raw {
        RawMatcher::Text(list) => Matcher::Text {
            words: words("text", list),
            ignore_case,
        },
        RawMatcher::Contains(list) => Matcher::Contains {
            words: words("contains", list),
            ignore_case,
        },
        RawMatcher::Prefix(list) => Matcher::Prefix {
            words: words("prefix", list),
            ignore_case,
        },
        RawMatcher::Regex(pattern) => {
            match regex::RegexBuilder::new(&pattern)
                .case_insensitive(ignore_case)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => {
                    vars.groups = re.captures_len() - 1;
                    vars.names = re.capture_names().flatten().map(str::to_owned).collect();
                    Matcher::Regex(re)
                }
                Err(e) => {
                    // The regex crate's message ends with the line that says what is wrong.
                    let last = e.to_string().lines().last().unwrap_or("").trim().to_owned();
                    check.problems.push(format!(
                        "{label}.regex: {pattern:?} does not compile: {last}"
                    ));
                    return None;
                }
            }
        }
        RawMatcher::Event(event) => {
            let event = event.trim().to_owned();
            if event.is_empty() {
                check
                    .problems
                    .push(format!("{label}.event: needs an event name"));
            } else if !KNOWN_EVENTS.iter().any(|k| k.eq_ignore_ascii_case(&event)) {
                check
                    .warnings
                    .push(unknown_name(label, "event", &event, KNOWN_EVENTS));
            }
            Matcher::Event { event, key }
        }
        RawMatcher::MsgType(t) => {
            let t = t.trim().to_owned();
            if t.is_empty() {
                check
                    .problems
                    .push(format!("{label}.msg_type: needs a MsgType"));
            } else if !DOCUMENTED_MSG_TYPES
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&t))
            {
                check
                    .warnings
                    .push(unknown_name(label, "msg_type", &t, DOCUMENTED_MSG_TYPES));
            }
            Matcher::MsgType(t)
        }
    })
}

/// The warning for an event or MsgType name WeChat does not document (it still
/// matches, in case WeChat sends it).
fn unknown_name(label: &str, key: &str, name: &str, known: &[&str]) -> String {
    match did_you_mean(name, known) {
        Some(k) => format!(
            "{label}.{key}: {name:?} is not one WeChat documents; did you mean {k:?}? (the rule matches it as written)"
        ),
        None => format!(
            "{label}.{key}: {name:?} is not one WeChat documents (the rule matches it as written)"
        ),
    }
}

/// Check `[default]`.
pub(super) fn validate_default(raw: RawAction, check: &mut Check<'_>) -> Option<Action> {
    raw.validate("default", &TemplateVars::default(), check)
}

impl RawAction {
    fn validate(self, label: &str, vars: &TemplateVars, check: &mut Check<'_>) -> Option<Action> {
        let before = check.problems.len();
        let given = [
            self.reply.is_some(),
            self.replies.is_some(),
            self.run.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given != 1 {
            check.problems.push(format!(
                "{label}: needs exactly one of `reply`, `replies` or `run`"
            ));
            return None;
        }
        if self.fallback.is_some() && self.run.is_none() {
            check
                .problems
                .push(format!("{label}.fallback: only goes with `run`"));
        }
        let action = if let Some(reply) = self.reply {
            Action::Replies(vec![template(
                reply,
                &format!("{label}.reply"),
                vars,
                check,
            )])
        } else if let Some(replies) = self.replies {
            if replies.is_empty() {
                check
                    .problems
                    .push(format!("{label}.replies: needs at least one reply"));
            }
            let list = replies
                .into_iter()
                .enumerate()
                .map(|(i, r)| template(r, &format!("{label}.replies[{i}]"), vars, check))
                .collect();
            Action::Replies(list)
        } else {
            let run = self.run?;
            let fallback = self
                .fallback
                .map(|f| template(f, &format!("{label}.fallback"), vars, check));
            let timeout_ms = run.timeout_ms.unwrap_or(defaults::PROGRAM_TIMEOUT_MS);
            if !(1..=defaults::MAX_PROGRAM_TIMEOUT_MS).contains(&timeout_ms) {
                check.problems.push(format!(
                    "{label}.run.timeout_ms: must be 1 to {}",
                    defaults::MAX_PROGRAM_TIMEOUT_MS
                ));
            }
            let command = run.command.unwrap_or_default();
            match (&run.url, command.is_empty()) {
                (Some(_), false) => check.problems.push(format!(
                    "{label}.run: give `command` (a program) or `url` (an HTTP hook), not both"
                )),
                (None, true) => check.problems.push(format!(
                    "{label}.run.command: is empty; give the program and its arguments (or `url` for an HTTP hook)"
                )),
                (Some(url), true) => {
                    if let Err(e) = check_hook_url(url) {
                        check.problems.push(format!("{label}.run.url: {e}"));
                    }
                    if !run.env.is_empty() {
                        check.problems.push(format!(
                            "{label}.run.env: only goes with `command` (a hook gets no environment)"
                        ));
                    }
                }
                (None, false) => {}
            }
            for (name, value) in &run.env {
                let bad_name = name.is_empty()
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if bad_name || value.contains('\0') {
                    check.problems.push(format!(
                        "{label}.run.env.{name}: names are letters, digits and `_`; values have no NUL"
                    ));
                }
            }
            Action::Run {
                program: Arc::new(Program {
                    command,
                    url: run.url,
                    dir: check.base.to_path_buf(),
                    timeout_ms,
                    env: run.env.into_iter().collect(),
                }),
                fallback,
            }
        };
        (check.problems.len() == before).then_some(action)
    }
}

/// An HTTP hook's URL: `http://` or `https://`, a host, no user or password in it.
pub(super) fn check_hook_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} does not start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("has a user or password in it: not supported".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has spaces or control characters".into());
    }
    Ok(())
}

/// Check a reply and parse the template of its text.
pub(super) fn template_plain(reply: Reply, key: &str, check: &mut Check<'_>) -> TemplateReply {
    template(reply, key, &TemplateVars::default(), check)
}

/// Check a reply and parse the template of its text.
fn template(reply: Reply, key: &str, vars: &TemplateVars, check: &mut Check<'_>) -> TemplateReply {
    for p in reply.problems() {
        check.problems.push(format!("{key}: {p}"));
    }
    if let Reply::News(articles) = &reply {
        if articles.len() > 1 {
            check.warnings.push(format!(
                "{key}: news reply has {} articles; WeChat is reported to show only the first \
                 when answering a user's message",
                articles.len()
            ));
        }
    }
    let text = match &reply {
        Reply::Text(t) => Template::parse(t, vars.groups, &vars.names).unwrap_or_else(|e| {
            check.problems.push(format!("{key}: {e}"));
            None
        }),
        _ => None,
    };
    TemplateReply {
        reply: Arc::new(reply),
        text,
    }
}
