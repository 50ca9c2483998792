//! Jepsen-style EDN histories of a string key-value store with `get`, `put` and `append`.
//!
//! One event per line, in real-time order:
//! `{:process 3, :type :invoke, :f :append, :key "0", :value "x 3 0 y"}`.
//! `:invoke` starts an operation; the same process's next `:ok` ends it,
//! `:fail` means it did not happen, `:info` that its outcome is unknown. An
//! invocation with no completion is unknown too.

use std::collections::HashMap;

use crate::history::{Operation, Outcome};
use crate::model::Model;

/// An operation on one key of the string store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvInput {
    /// Read the key.
    Get,
    /// Set the key.
    Put(String),
    /// Concatenate to the key.
    Append(String),
}

/// The string store: every key starts empty; `put` sets, `append` concatenates, `get` reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppendStore;

impl Model for AppendStore {
    type State = String;
    type Input = KvInput;
    /// What a `get` read (ignored for writes).
    type Output = String;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvInput, output: Option<&String>) -> Option<String> {
        match input {
            KvInput::Get => match output {
                Some(seen) if seen != state => None,
                _ => Some(state.clone()),
            },
            KvInput::Put(value) => Some(value.clone()),
            KvInput::Append(value) => Some(format!("{state}{value}")),
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get)
    }

    fn observes(&self, read: &KvInput, output: &String, write: &KvInput) -> bool {
        match (read, write) {
            (KvInput::Get, KvInput::Put(value) | KvInput::Append(value)) => {
                output.contains(value.as_str())
            }
            _ => false,
        }
    }
}

/// A keyed operation of the string store.
pub type KvOperation = (String, Operation<KvInput, String>);

/// A line that is not an event of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct EdnError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

struct Event<'a> {
    process: u64,
    kind: &'a str,
    function: &'a str,
    key: &'a str,
    value: Option<&'a str>,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(name)? + name.len();
    let rest = line[start..].trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.find('"').map(|end| &quoted[..end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn parse_event(line: &str) -> Result<Event<'_>, String> {
    let get = |name: &str| field(line, name).ok_or_else(|| format!("no {name} field"));
    let process = get(":process")?
        .parse()
        .map_err(|_| "process is not a number".to_owned())?;
    let kind = get(":type")?.trim_start_matches(':');
    let function = get(":f")?.trim_start_matches(':');
    let key = get(":key")?;
    let value = match get(":value")? {
        "nil" => None,
        value => Some(value),
    };
    Ok(Event {
        process,
        kind,
        function,
        key,
        value,
    })
}

/// Reads a history: `(key, operation)` pairs, times being line numbers.
pub fn parse(text: &str) -> Result<Vec<KvOperation>, EdnError> {
    let mut operations: Vec<Option<KvOperation>> = Vec::new();
    let mut pending: HashMap<u64, usize> = HashMap::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let error = |message: String| EdnError {
            line: number + 1,
            message,
        };
        let event = parse_event(line).map_err(error)?;
        let at = number as u64;
        match event.kind {
            "invoke" => {
                let input = match (event.function, event.value) {
                    ("get", _) => KvInput::Get,
                    ("put", Some(v)) => KvInput::Put(v.to_owned()),
                    ("append", Some(v)) => KvInput::Append(v.to_owned()),
                    (f, v) => return Err(error(format!("cannot invoke {f} with value {v:?}"))),
                };
                if pending.insert(event.process, operations.len()).is_some() {
                    return Err(error(format!(
                        "process {} invoked twice without completing",
                        event.process
                    )));
                }
                let op = Operation {
                    client: event.process,
                    input,
                    invoked: at,
                    outcome: Outcome::Unknown,
                };
                operations.push(Some((event.key.to_owned(), op)));
            }
            "ok" | "fail" | "info" => {
                let index = pending
                    .remove(&event.process)
                    .ok_or_else(|| error(format!("process {} completed nothing", event.process)))?;
                match event.kind {
                    "ok" => {
                        if let Some((_, op)) = operations[index].as_mut() {
                            let output = event.value.unwrap_or_default().to_owned();
                            op.outcome = Outcome::Returned { output, at };
                        }
                    }
                    "fail" => operations[index] = None,
                    _ => {}
                }
            }
            other => return Err(error(format!("unknown event type {other:?}"))),
        }
    }
    Ok(operations.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pair_into_operations() {
        let text = r#"{:process 0, :type :invoke, :f :put, :key "4", :value "x 0 1 y"}
{:process 1, :type :invoke, :f :get, :key "4", :value nil}
{:process 0, :type :ok, :f :put, :key "4", :value "x 0 1 y"}
{:process 1, :type :ok, :f :get, :key "4", :value "x 0 1 y"}
{:process 2, :type :invoke, :f :append, :key "5", :value "z"}
{:process 2, :type :fail, :f :append, :key "5", :value "z"}
{:process 3, :type :invoke, :f :append, :key "5", :value "w"}
"#;
        let ops = parse(text).expect("parses");
        assert_eq!(ops.len(), 3, "the failed append is dropped");
        assert_eq!(ops[0].1.input, KvInput::Put("x 0 1 y".into()));
        assert_eq!(
            ops[1].1.outcome,
            Outcome::Returned {
                output: "x 0 1 y".into(),
                at: 3
            }
        );
        assert_eq!(ops[2].1.outcome, Outcome::Unknown, "never completed");
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let cases = [
            "{:process x, :type :invoke, :f :get, :key \"1\", :value nil}",
            "{:process 1, :type :ok, :f :get, :key \"1\", :value nil}",
            "{:process 1, :type :invoke, :f :cas, :key \"1\", :value nil}",
            "{:process 1, :type :invoke, :f :put, :key \"1\"}",
        ];
        for line in cases {
            assert_eq!(parse(line).map_err(|e| e.line), Err(1), "{line}");
        }
    }
}
