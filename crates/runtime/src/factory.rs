//! Task factories: one task definition that expands into many tasks, as Batch Shipyard's
//! `task_factory` does (`parametric_sweep`, file-less `random`, `repeat`), plus the
//! `merge_task` that depends on every generated task.
//!
//! The types carry Batch Shipyard's key names, so a `jobs.yaml` `task_factory` deserializes
//! into [`TaskFactory`] unchanged. Expansion is pure: each generated task's command is the
//! template with `{0}`, `{1}`, … (or `{}` auto-numbered; `{{` / `}}` escape braces) replaced by
//! the generated arguments, formatted as Python's `str.format` prints them (`True`, `2.0`).
//! `random` uses Python's Mersenne Twister seeding and formulas, so a seeded sweep produces the
//! same numbers Batch Shipyard produced.
//!
//! ```
//! use shipyard_runtime::factory::{TaskFactory, ParametricSweep, RangeSpec};
//! let f = TaskFactory::ParametricSweep(ParametricSweep::Product(vec![
//!     RangeSpec { start: 0, stop: 2, step: 1 },
//!     RangeSpec { start: 10, stop: 30, step: 10 },
//! ]));
//! let cmds = f.expand("run -a {0} -b {1}").unwrap();
//! assert_eq!(cmds, ["run -a 0 -b 10", "run -a 0 -b 20", "run -a 1 -b 10", "run -a 1 -b 20"]);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// Upper bound of tasks one factory may generate (a typo such as `stop: 10000000` should fail
/// quickly instead of exhausting memory).
pub const MAX_GENERATED_TASKS: usize = 1_000_000;

/// Why a factory cannot expand.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FactoryError {
    /// A parameter is out of range (`step: 0`, `length` larger than the iterable, …).
    #[error("task_factory.{field}: {reason}")]
    Invalid {
        /// The factory field, e.g. `parametric_sweep.product[1].step`.
        field: String,
        /// Why.
        reason: String,
    },
    /// The command template is malformed or refers to a missing argument.
    #[error("command template `{template}`: {reason}")]
    Template {
        /// The template as written.
        template: String,
        /// Why.
        reason: String,
    },
    /// A feature Batch Shipyard documents that shipyard cannot expand.
    #[error("task_factory.{field}: {reason}")]
    Unsupported {
        /// The factory field.
        field: String,
        /// Why.
        reason: String,
    },
    /// More than [`MAX_GENERATED_TASKS`] tasks.
    #[error("the task factory would generate {count} tasks (more than {MAX_GENERATED_TASKS})")]
    TooMany {
        /// How many.
        count: u128,
    },
}

/// `task_factory`: exactly one of its forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskFactory {
    /// `parametric_sweep`.
    ParametricSweep(ParametricSweep),
    /// `random` (without `file`).
    Random(RandomFactory),
    /// `repeat: N`: the task N times, command unchanged.
    Repeat(u64),
}

/// `parametric_sweep`: exactly one of its forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParametricSweep {
    /// `product`: the Cartesian product of integer ranges (Python `range(start, stop, step)`).
    Product(Vec<RangeSpec>),
    /// `product_iterables`: the Cartesian product of lists.
    ProductIterables(Vec<Vec<Scalar>>),
    /// `combinations`: `length`-combinations of `iterable` (with `replacement` optionally).
    Combinations(Combinations),
    /// `permutations`: `length`-permutations of `iterable`.
    Permutations(Permutations),
    /// `zip`: the lists side by side, as long as the shortest.
    Zip(Vec<Vec<Scalar>>),
}

/// One `product` entry: Python's `range(start, stop, step)` (stop exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeSpec {
    /// First value.
    pub start: i64,
    /// End (exclusive).
    pub stop: i64,
    /// Increment (negative counts down; zero is an error).
    #[serde(default = "one")]
    pub step: i64,
}

fn one() -> i64 {
    1
}

/// `combinations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Combinations {
    /// The items.
    pub iterable: Vec<Scalar>,
    /// Items per combination.
    pub length: usize,
    /// Allow an item more than once (`combinations_with_replacement`).
    #[serde(default)]
    pub replacement: bool,
}

/// `permutations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permutations {
    /// The items.
    pub iterable: Vec<Scalar>,
    /// Items per permutation (default: all of them).
    #[serde(default)]
    pub length: Option<usize>,
}

/// `random` (file-less): `generate` tasks, each with one random number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFactory {
    /// How many tasks.
    pub generate: u64,
    /// Seed of Python's Mersenne Twister (unset: a seed from the system clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Random integers from `range(start, stop, step)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<RangeSpec>,
    /// Random floats from a distribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
}

/// `random.distribution`: Python `random` module distributions, Batch Shipyard's parameter names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Distribution {
    Uniform {
        a: f64,
        b: f64,
    },
    Triangular {
        low: f64,
        high: f64,
        mode: Option<f64>,
    },
    Beta {
        alpha: f64,
        beta: f64,
    },
    Exponential {
        lambda: f64,
    },
    Gamma {
        alpha: f64,
        beta: f64,
    },
    Gauss {
        mu: f64,
        sigma: f64,
    },
    Lognormal {
        mu: f64,
        sigma: f64,
    },
    Pareto {
        alpha: f64,
    },
    Weibull {
        alpha: f64,
        beta: f64,
    },
}

/// A list item of a sweep: printed as Python prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` → `True`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float (`2.0` stays `2.0`).
    Float(f64),
    /// A string, as is.
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(true) => f.write_str("True"),
            Scalar::Bool(false) => f.write_str("False"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => f.write_str(&python_float(*x)),
            Scalar::Str(s) => f.write_str(s),
        }
    }
}

/// A float as Python's `str()` prints it (`1.0`, `1e-05`, `1e+16`, `inf`).
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust: 1e-5 / 1.5e16; Python: 1e-05 / 1.5e+16
        let s = format!("{x:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mant}e{sign}{digits:0>2}");
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

impl TaskFactory {
    /// The argument lists of every generated task, in Batch Shipyard's order.
    pub fn arguments(&self) -> Result<Vec<Vec<String>>, FactoryError> {
        match self {
            TaskFactory::Repeat(n) => {
                check_count(u128::from(*n))?;
                Ok(vec![Vec::new(); *n as usize])
            }
            TaskFactory::Random(r) => r.arguments(),
            TaskFactory::ParametricSweep(s) => s.arguments(),
        }
    }

    /// The command of every generated task: `template` with the arguments substituted.
    pub fn expand(&self, template: &str) -> Result<Vec<String>, FactoryError> {
        let template = Template::parse(template)?;
        self.arguments()?
            .iter()
            .map(|args| template.render(args))
            .collect()
    }
}

fn check_count(count: u128) -> Result<(), FactoryError> {
    if count > MAX_GENERATED_TASKS as u128 {
        Err(FactoryError::TooMany { count })
    } else {
        Ok(())
    }
}

fn strings(items: &[Scalar]) -> Vec<String> {
    items.iter().map(Scalar::to_string).collect()
}

impl RangeSpec {
    /// The values of Python's `range(start, stop, step)`.
    pub fn values(&self, field: &str) -> Result<Vec<i64>, FactoryError> {
        if self.step == 0 {
            return Err(FactoryError::Invalid {
                field: format!("{field}.step"),
                reason: "must not be 0".into(),
            });
        }
        let (start, stop, step) = (
            i128::from(self.start),
            i128::from(self.stop),
            i128::from(self.step),
        );
        let len = if step > 0 {
            (stop - start + step - 1).div_euclid(step).max(0)
        } else {
            (start - stop - step - 1).div_euclid(-step).max(0)
        };
        check_count(len as u128)?;
        Ok((0..len).map(|i| (start + i * step) as i64).collect())
    }
}

impl ParametricSweep {
    fn arguments(&self) -> Result<Vec<Vec<String>>, FactoryError> {
        match self {
            ParametricSweep::Product(ranges) => {
                let lists = ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let field = format!("parametric_sweep.product[{i}]");
                        Ok(r.values(&field)?.iter().map(i64::to_string).collect())
                    })
                    .collect::<Result<Vec<Vec<String>>, FactoryError>>()?;
                product(&lists)
            }
            ParametricSweep::ProductIterables(lists) => {
                product(&lists.iter().map(|l| strings(l)).collect::<Vec<_>>())
            }
            ParametricSweep::Zip(lists) => {
                let lists: Vec<Vec<String>> = lists.iter().map(|l| strings(l)).collect();
                let n = lists.iter().map(Vec::len).min().unwrap_or(0);
                Ok((0..n)
                    .map(|i| lists.iter().map(|l| l[i].clone()).collect())
                    .collect())
            }
            ParametricSweep::Combinations(c) => {
                let items = strings(&c.iterable);
                let idx = if c.replacement {
                    combinations_with_replacement(items.len(), c.length)
                } else {
                    combinations(items.len(), c.length)
                };
                Ok(pick(&items, idx))
            }
            ParametricSweep::Permutations(p) => {
                let items = strings(&p.iterable);
                let k = p.length.unwrap_or(items.len());
                Ok(pick(&items, permutations(items.len(), k)))
            }
        }
    }
}

fn pick(items: &[String], idx: Vec<Vec<usize>>) -> Vec<Vec<String>> {
    idx.into_iter()
        .map(|c| c.into_iter().map(|i| items[i].clone()).collect())
        .collect()
}

/// itertools.product order: the last list varies fastest.
fn product(lists: &[Vec<String>]) -> Result<Vec<Vec<String>>, FactoryError> {
    let count = lists
        .iter()
        .try_fold(1u128, |acc, l| acc.checked_mul(l.len() as u128))
        .unwrap_or(u128::MAX);
    check_count(count)?;
    let mut out: Vec<Vec<String>> = vec![Vec::with_capacity(lists.len())];
    for list in lists {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                list.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(v.clone());
                    p
                })
            })
            .collect();
    }
    Ok(out)
}

/// itertools.combinations(range(n), k) as index lists, in lexicographic order.
fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k > n {
        return Vec::new();
    }
    let mut idx: Vec<usize> = (0..k).collect();
    let mut out = vec![idx.clone()];
    loop {
        let Some(i) = (0..k).rev().find(|&i| idx[i] != i + n - k) else {
            return out;
        };
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
        out.push(idx.clone());
    }
}

/// itertools.combinations_with_replacement(range(n), k).
fn combinations_with_replacement(n: usize, k: usize) -> Vec<Vec<usize>> {
    if n == 0 && k > 0 {
        return Vec::new();
    }
    let mut idx = vec![0; k];
    let mut out = vec![idx.clone()];
    loop {
        let Some(i) = (0..k).rev().find(|&i| idx[i] != n - 1) else {
            return out;
        };
        let v = idx[i] + 1;
        for x in &mut idx[i..] {
            *x = v;
        }
        out.push(idx.clone());
    }
}

/// itertools.permutations(range(n), k), in lexicographic order of positions.
fn permutations(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(n: usize, k: usize, cur: &mut Vec<usize>, used: &mut [bool], out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in 0..n {
            if !used[i] {
                used[i] = true;
                cur.push(i);
                go(n, k, cur, used, out);
                cur.pop();
                used[i] = false;
            }
        }
    }
    let mut out = Vec::new();
    if k <= n {
        go(
            n,
            k,
            &mut Vec::with_capacity(k),
            &mut vec![false; n],
            &mut out,
        );
    }
    out
}

impl RandomFactory {
    fn arguments(&self) -> Result<Vec<Vec<String>>, FactoryError> {
        check_count(u128::from(self.generate))?;
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let mut rng = PyRandom::seeded(seed);
        let draw: Box<dyn FnMut(&mut PyRandom) -> String> =
            match (&self.integer, &self.distribution) {
                (Some(r), None) => {
                    let values = r.values("random.integer")?;
                    if values.is_empty() {
                        return Err(FactoryError::Invalid {
                            field: "random.integer".into(),
                            reason: "empty range".into(),
                        });
                    }
                    let (start, step, n) = (r.start, r.step, values.len() as u64);
                    Box::new(move |g| (start + step * g.below(n) as i64).to_string())
                }
                (None, Some(d)) => {
                    let d = *d;
                    d.check()?;
                    Box::new(move |g| python_float(d.sample(g)))
                }
                _ => {
                    return Err(FactoryError::Invalid {
                        field: "random".into(),
                        reason: "give exactly one of `integer` and `distribution`".into(),
                    })
                }
            };
        let mut draw = draw;
        Ok((0..self.generate).map(|_| vec![draw(&mut rng)]).collect())
    }
}

impl Distribution {
    fn check(&self) -> Result<(), FactoryError> {
        match self {
            Distribution::Beta { .. } | Distribution::Gamma { .. } => {
                Err(FactoryError::Unsupported {
                    field: "random.distribution".into(),
                    reason: "beta and gamma distributions are not implemented; use uniform, \
                             triangular, exponential, gauss, lognormal, pareto or weibull"
                        .into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Python `random` module formulas (3.x).
    fn sample(&self, g: &mut PyRandom) -> f64 {
        match *self {
            Distribution::Uniform { a, b } => a + (b - a) * g.random(),
            Distribution::Triangular { low, high, mode } => {
                let mut u = g.random();
                let mut c = match mode {
                    Some(m) if high != low => (m - low) / (high - low),
                    Some(_) => return low,
                    None => 0.5,
                };
                let (mut low, mut high) = (low, high);
                if u > c {
                    u = 1.0 - u;
                    c = 1.0 - c;
                    std::mem::swap(&mut low, &mut high);
                }
                low + (high - low) * (u * c).sqrt()
            }
            Distribution::Exponential { lambda } => -(1.0 - g.random()).ln() / lambda,
            Distribution::Gauss { mu, sigma } => mu + g.gauss() * sigma,
            Distribution::Lognormal { mu, sigma } => (mu + g.normal() * sigma).exp(),
            Distribution::Pareto { alpha } => (1.0 - g.random()).powf(-1.0 / alpha),
            Distribution::Weibull { alpha, beta } => {
                alpha * (-(1.0 - g.random()).ln()).powf(1.0 / beta)
            }
            Distribution::Beta { .. } | Distribution::Gamma { .. } => f64::NAN,
        }
    }
}

/// MT19937 seeded like CPython's `random.seed(int)`.
struct PyRandom {
    mt: [u32; 624],
    index: usize,
    gauss_next: Option<f64>,
}

impl PyRandom {
    fn seeded(seed: u64) -> Self {
        let mut r = PyRandom {
            mt: [0; 624],
            index: 624,
            gauss_next: None,
        };
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        r.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..624.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= 624 {
                r.mt[0] = r.mt[623];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..623 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= 624 {
                r.mt[0] = r.mt[623];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..624 {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.index = 624;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.random()`: 53-bit float in [0, 1).
    fn random(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `getrandbits(k)` for k ≤ 64.
    fn bits(&mut self, k: u32) -> u64 {
        if k <= 32 {
            u64::from(self.next_u32() >> (32 - k))
        } else {
            let lo = u64::from(self.next_u32());
            let hi = u64::from(self.next_u32() >> (64 - k));
            (hi << 32) | lo
        }
    }

    /// `_randbelow(n)` (rejection sampling, as CPython).
    fn below(&mut self, n: u64) -> u64 {
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.bits(k);
            if r < n {
                return r;
            }
        }
    }

    fn gauss(&mut self) -> f64 {
        if let Some(z) = self.gauss_next.take() {
            return z;
        }
        let x2pi = self.random() * std::f64::consts::TAU;
        let g2rad = (-2.0 * (1.0 - self.random()).ln()).sqrt();
        self.gauss_next = Some(x2pi.sin() * g2rad);
        x2pi.cos() * g2rad
    }

    /// `normalvariate(0, 1)` (Kinderman and Monahan).
    fn normal(&mut self) -> f64 {
        let magic = 4.0 * (-0.5f64).exp() / 2.0f64.sqrt();
        loop {
            let u1 = self.random();
            let u2 = 1.0 - self.random();
            let z = magic * (u1 - 0.5) / u2;
            if z * z / 4.0 <= -u2.ln() {
                return z;
            }
        }
    }
}

/// A parsed `str.format` template: literal text and positional fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    fields: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Arg(usize),
}

impl Template {
    /// Parses `{0}`, `{1}`, `{}` (auto-numbered), `{{` and `}}`.
    pub fn parse(source: &str) -> Result<Self, FactoryError> {
        let err = |reason: String| FactoryError::Template {
            template: source.to_string(),
            reason,
        };
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut auto = 0usize;
        let (mut saw_auto, mut saw_manual) = (false, false);
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => return Err(err("single `}` (write `}}` for a literal brace)".into())),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(err("unclosed `{`".into())),
                        }
                    }
                    let index = if name.is_empty() {
                        saw_auto = true;
                        auto += 1;
                        auto - 1
                    } else {
                        saw_manual = true;
                        name.parse::<usize>().map_err(|_| {
                            err(format!(
                                "`{{{name}}}`: only positional fields `{{0}}`, `{{1}}`, … are supported"
                            ))
                        })?
                    };
                    if saw_auto && saw_manual {
                        return Err(err(
                            "cannot mix automatic `{}` and numbered `{0}` fields".into()
                        ));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Arg(index));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let fields = parts
            .iter()
            .filter_map(|p| match p {
                Part::Arg(i) => Some(i + 1),
                Part::Text(_) => None,
            })
            .max()
            .unwrap_or(0);
        Ok(Template {
            source: source.to_string(),
            parts,
            fields,
        })
    }

    /// Substitutes `args`; a field past the end of `args` is an error (Python's IndexError).
    pub fn render(&self, args: &[String]) -> Result<String, FactoryError> {
        if self.fields > args.len() {
            return Err(FactoryError::Template {
                template: self.source.clone(),
                reason: format!(
                    "refers to argument {{{}}} but the factory generates {} argument(s)",
                    self.fields - 1,
                    args.len()
                ),
            });
        }
        let mut out = String::with_capacity(self.source.len() + 8 * args.len());
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Arg(i) => out.push_str(&args[*i]),
            }
        }
        Ok(out)
    }
}

/// Task ids as Batch Shipyard generates them: `prefix` + the counter zero-filled to `width`
/// (defaults `task-` and 5), counting from `start`.
pub fn generated_ids(prefix: &str, width: usize, start: usize, count: usize) -> Vec<String> {
    (start..start + count)
        .map(|i| format!("{prefix}{i:0width$}"))
        .collect()
}

/// `merge_task`: the dependencies of the task that runs after every generated one.
pub fn merge_task_depends_on(generated: &[String]) -> Vec<String> {
    generated.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn s(v: &[&str]) -> Vec<Scalar> {
        v.iter().map(|x| Scalar::Str((*x).to_string())).collect()
    }

    fn yaml_like(json: &str) -> TaskFactory {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn product_of_ranges_last_varies_fastest() {
        let f = yaml_like(
            r#"{"parametric_sweep":{"product":[{"start":0,"stop":3,"step":1},{"start":10,"stop":0,"step":-5}]}}"#,
        );
        assert_eq!(
            f.expand("a={0} b={1}").unwrap(),
            ["a=0 b=10", "a=0 b=5", "a=1 b=10", "a=1 b=5", "a=2 b=10", "a=2 b=5"]
        );
    }

    #[test]
    fn product_iterables_and_zip() {
        let f = yaml_like(r#"{"parametric_sweep":{"product_iterables":[["a","b"],[1,2.0,true]]}}"#);
        assert_eq!(
            f.expand("{0}-{1}").unwrap(),
            ["a-1", "a-2.0", "a-True", "b-1", "b-2.0", "b-True"]
        );
        let z = yaml_like(r#"{"parametric_sweep":{"zip":[["a","b","c"],["x","y"]]}}"#);
        assert_eq!(z.expand("{}{}").unwrap(), ["ax", "by"]);
    }

    #[test]
    fn combinations_permutations_match_itertools() {
        let c = TaskFactory::ParametricSweep(ParametricSweep::Combinations(Combinations {
            iterable: s(&["a", "b", "c", "d"]),
            length: 2,
            replacement: false,
        }));
        assert_eq!(
            c.expand("{0}{1}").unwrap(),
            ["ab", "ac", "ad", "bc", "bd", "cd"]
        );
        let r = TaskFactory::ParametricSweep(ParametricSweep::Combinations(Combinations {
            iterable: s(&["a", "b", "c"]),
            length: 2,
            replacement: true,
        }));
        assert_eq!(
            r.expand("{0}{1}").unwrap(),
            ["aa", "ab", "ac", "bb", "bc", "cc"]
        );
        let p = TaskFactory::ParametricSweep(ParametricSweep::Permutations(Permutations {
            iterable: s(&["a", "b", "c"]),
            length: Some(2),
        }));
        assert_eq!(
            p.expand("{0}{1}").unwrap(),
            ["ab", "ac", "ba", "bc", "ca", "cb"]
        );
        let too_long = TaskFactory::ParametricSweep(ParametricSweep::Combinations(Combinations {
            iterable: s(&["a"]),
            length: 2,
            replacement: false,
        }));
        assert!(too_long.expand("{0}").unwrap().is_empty());
    }

    #[test]
    fn repeat_keeps_the_command() {
        assert_eq!(
            TaskFactory::Repeat(3).expand("echo {{x}}").unwrap(),
            ["echo {x}", "echo {x}", "echo {x}"]
        );
    }

    // Golden values printed by CPython 3 (`random.seed(s); random.randrange(...)` etc.).
    #[test]
    fn random_integers_match_cpython() {
        let f = |seed, start, stop, step, n| {
            TaskFactory::Random(RandomFactory {
                generate: n,
                seed: Some(seed),
                integer: Some(RangeSpec { start, stop, step }),
                distribution: None,
            })
            .expand("{0}")
            .unwrap()
        };
        assert_eq!(f(42, 0, 100, 1, 5), ["81", "14", "3", "94", "35"]);
        assert_eq!(f(7, 10, 50, 5, 5), ["35", "20", "40", "10", "15"]);
        assert_eq!(f(123_456_789_012, 0, 1000, 1, 3), ["386", "667", "21"]);
    }

    #[test]
    fn random_distributions_match_cpython() {
        let f = |seed, d, n| {
            TaskFactory::Random(RandomFactory {
                generate: n,
                seed: Some(seed),
                integer: None,
                distribution: Some(d),
            })
            .expand("{0}")
            .unwrap()
        };
        assert_eq!(
            f(3, Distribution::Uniform { a: 0.5, b: 2.0 }, 3),
            [
                "0.856946940637837",
                "1.3163438379439278",
                "1.0549327498221188"
            ]
        );
        assert_eq!(
            f(
                5,
                Distribution::Gauss {
                    mu: 0.0,
                    sigma: 1.0
                },
                3
            ),
            [
                "-1.1788417512306717",
                "-1.1481606807908016",
                "0.6694689143859696"
            ]
        );
        assert_eq!(
            f(
                9,
                Distribution::Triangular {
                    low: 1.0,
                    high: 5.0,
                    mode: Some(2.0)
                },
                2
            ),
            ["2.461513894814521", "2.2576913333361803"]
        );
        assert_eq!(
            f(11, Distribution::Exponential { lambda: 2.0 }, 2),
            ["0.301086423948575", "0.4102316907315482"]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let f = yaml_like(r#"{"parametric_sweep":{"product":[{"start":0,"stop":3,"step":0}]}}"#);
        assert_eq!(
            f.expand("{0}").unwrap_err().to_string(),
            "task_factory.parametric_sweep.product[0].step: must not be 0"
        );
        let f = TaskFactory::Repeat(1);
        assert!(matches!(
            f.expand("{0}"),
            Err(FactoryError::Template { .. })
        ));
        assert!(Template::parse("{name}").is_err());
        assert!(Template::parse("{0").is_err());
        assert!(Template::parse("{} {1}").is_err());
        let big = yaml_like(
            r#"{"parametric_sweep":{"product":[{"start":0,"stop":100000,"step":1},{"start":0,"stop":100000,"step":1}]}}"#,
        );
        assert!(matches!(big.arguments(), Err(FactoryError::TooMany { .. })));
    }

    #[test]
    fn python_float_formatting() {
        assert_eq!(python_float(2.0), "2.0");
        assert_eq!(python_float(0.00001), "1e-05");
        assert_eq!(python_float(1.5e16), "1.5e+16");
        assert_eq!(python_float(0.25), "0.25");
    }

    #[test]
    fn ids_and_merge_task() {
        let ids = generated_ids("task-", 5, 0, 3);
        assert_eq!(ids, ["task-00000", "task-00001", "task-00002"]);
        assert_eq!(merge_task_depends_on(&ids), ids);
    }

    #[test]
    fn ten_thousand_tasks_expand_quickly() {
        let f = yaml_like(
            r#"{"parametric_sweep":{"product":[{"start":0,"stop":100,"step":1},{"start":0,"stop":100,"step":1}]}}"#,
        );
        let t = std::time::Instant::now();
        let cmds = f
            .expand("mpirun -np 4 /app/solver --a {0} --b {1} --out res-{0}-{1}.dat")
            .unwrap();
        let ids = generated_ids("task-", 5, 0, cmds.len());
        let elapsed = t.elapsed();
        assert_eq!(cmds.len(), 10_000);
        assert_eq!(ids.len(), 10_000);
        assert_eq!(
            cmds[9_999],
            "mpirun -np 4 /app/solver --a 99 --b 99 --out res-99-99.dat"
        );
        // Loose bound for unoptimized builds on a shared machine; release is far below.
        assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
    }
}
