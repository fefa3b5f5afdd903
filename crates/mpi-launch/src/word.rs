//! Words of a launch plan: literals, and values only known on the node at run time.

use std::collections::BTreeMap;

use crate::LaunchError;

/// A number known when the plan is built, or only at run time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Num {
    /// Known now.
    Lit(u32),
    /// The core count of the node running the launcher (`$(nproc)`).
    Nproc,
    /// The number of non-empty entries of a comma-separated host-list variable.
    HostCount(String),
    /// The number a shell command prints on the launching node (`$(nvidia-smi -L | wc -l)`);
    /// only a shell can resolve it.
    Command(String),
    /// The product of two numbers (total ranks = nodes × processes per node).
    Product(Box<Num>, Box<Num>),
}

impl Num {
    /// The value, when known now.
    pub fn known(&self) -> Option<u32> {
        match self {
            Num::Lit(n) => Some(*n),
            _ => None,
        }
    }

    /// `a × b`, folded when both are known (fails on overflow, naming `field`).
    pub(crate) fn times(a: Num, b: Num, field: &'static str) -> Result<Num, LaunchError> {
        match (&a, &b) {
            (Num::Lit(x), Num::Lit(y)) => {
                x.checked_mul(*y)
                    .map(Num::Lit)
                    .ok_or_else(|| LaunchError::Invalid {
                        field,
                        reason: format!("{x} × {y} overflows"),
                    })
            }
            _ => Ok(Num::Product(Box::new(a), Box::new(b))),
        }
    }

    pub(crate) fn resolve(&self, env: &RunEnv) -> Result<u64, LaunchError> {
        match self {
            Num::Lit(n) => Ok(u64::from(*n)),
            Num::Nproc => env
                .nproc
                .map(u64::from)
                .ok_or_else(|| LaunchError::Unresolved {
                    what: "nproc".to_string(),
                }),
            Num::HostCount(var) => Ok(env.hosts(var)?.len() as u64),
            Num::Command(cmd) => Err(LaunchError::Unresolved {
                what: format!("$({cmd})"),
            }),
            Num::Product(a, b) => Ok(a.resolve(env)?.saturating_mul(b.resolve(env)?)),
        }
    }
}

/// A value computed on the node when the command runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Deferred {
    /// The value of an environment variable (`"$NAME"`; `%NAME%` for cmd.exe).
    Var(String),
    /// A number that is not known now.
    Num(Num),
    /// The hosts of a comma-separated list variable, each followed by `suffix` and a count
    /// when given (Open MPI's `h1:2,h2:2`), joined with commas.
    HostList {
        /// The variable (`AZ_BATCH_HOST_LIST`).
        var: String,
        /// Text and count appended to each host (`":"`, processes per node).
        suffix: Option<(String, Num)>,
    },
    /// The text a shell command prints on the launching node, trailing newlines removed
    /// (`"$(cmd)"`): a value that exists only on the node, such as the InfiniBand partition
    /// key its node preparation wrote to a file. Only a shell can resolve it.
    Output(String),
}

impl Deferred {
    fn resolve(&self, env: &RunEnv) -> Result<String, LaunchError> {
        match self {
            Deferred::Var(name) => Ok(env.get(name)?.to_string()),
            Deferred::Num(n) => Ok(n.resolve(env)?.to_string()),
            Deferred::HostList { var, suffix } => {
                let hosts = env.hosts(var)?;
                let tail = match suffix {
                    Some((text, n)) => format!("{text}{}", n.resolve(env)?),
                    None => String::new(),
                };
                Ok(hosts
                    .iter()
                    .map(|h| format!("{h}{tail}"))
                    .collect::<Vec<_>>()
                    .join(","))
            }
            Deferred::Output(cmd) => Err(LaunchError::Unresolved {
                what: format!("$({cmd})"),
            }),
        }
    }
}

/// The entries of a host list as the rendered shell snippets see them: split on commas and
/// newlines, empty entries dropped.
pub(crate) fn split_hosts(list: &str) -> Vec<&str> {
    list.split([',', '\n']).filter(|h| !h.is_empty()).collect()
}

/// One piece of a [`Word`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// Literal text, passed exactly.
    Lit(String),
    /// A run-time value.
    Deferred(Deferred),
}

/// One argument (or environment value) of a plan: the concatenation of its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Word {
    parts: Vec<Part>,
}

impl Word {
    /// A literal word.
    pub fn lit(s: impl Into<String>) -> Word {
        Word {
            parts: vec![Part::Lit(s.into())],
        }
    }

    /// The value of environment variable `name` at run time.
    pub fn var(name: impl Into<String>) -> Word {
        Word::deferred(Deferred::Var(name.into()))
    }

    /// A single deferred value.
    pub fn deferred(d: Deferred) -> Word {
        Word {
            parts: vec![Part::Deferred(d)],
        }
    }

    /// A number (a literal when known now).
    pub fn num(n: Num) -> Word {
        match n {
            Num::Lit(v) => Word::lit(v.to_string()),
            other => Word::deferred(Deferred::Num(other)),
        }
    }

    /// Concatenates parts (adjacent literals are merged).
    pub fn concat(parts: impl IntoIterator<Item = Part>) -> Word {
        let mut out: Vec<Part> = Vec::new();
        for p in parts {
            match (out.last_mut(), p) {
                (Some(Part::Lit(prev)), Part::Lit(s)) => prev.push_str(&s),
                (_, Part::Lit(s)) if s.is_empty() => {}
                (_, p) => out.push(p),
            }
        }
        Word { parts: out }
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The text when the word is entirely literal.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// True when any part is only known at run time.
    pub fn is_deferred(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Deferred(_)))
    }

    /// The concrete text, given the run-time values.
    pub fn resolve(&self, env: &RunEnv) -> Result<String, LaunchError> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Deferred(d) => s.push_str(&d.resolve(env)?),
            }
        }
        Ok(s)
    }
}

impl From<&str> for Word {
    fn from(s: &str) -> Self {
        Word::lit(s)
    }
}

impl From<String> for Word {
    fn from(s: String) -> Self {
        Word::lit(s)
    }
}

impl From<&String> for Word {
    fn from(s: &String) -> Self {
        Word::lit(s.clone())
    }
}

/// The run-time values [`crate::LaunchPlan::resolve`] substitutes for deferred parts: the
/// environment variables of the node and its core count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunEnv {
    vars: BTreeMap<String, String>,
    nproc: Option<u32>,
}

impl RunEnv {
    /// An empty environment.
    pub fn new() -> RunEnv {
        RunEnv::default()
    }

    /// Sets a variable.
    pub fn var(mut self, name: impl Into<String>, value: impl Into<String>) -> RunEnv {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Sets the core count (`$(nproc)`).
    pub fn nproc(mut self, n: u32) -> RunEnv {
        self.nproc = Some(n);
        self
    }

    /// The entries of a host-list variable; an unset variable or one without a single host
    /// is an error (it would otherwise resolve to `-np 0` and an empty host list).
    pub(crate) fn hosts(&self, var: &str) -> Result<Vec<&str>, LaunchError> {
        let hosts = split_hosts(self.get(var)?);
        if hosts.is_empty() {
            return Err(LaunchError::Invalid {
                field: "hosts",
                reason: format!("run-time variable {var} holds no hosts"),
            });
        }
        Ok(hosts)
    }

    fn get(&self, name: &str) -> Result<&str, LaunchError> {
        self.vars
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| LaunchError::Unresolved {
                what: format!("variable {name}"),
            })
    }
}
