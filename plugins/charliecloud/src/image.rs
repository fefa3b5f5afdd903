//! Where a task's image comes from, and the job preparation commands that put it on a node.

use shipyard_runtime::shell::{file_name_safe, quote, quote_expanding};

/// Where unpacked images live on a node (relative to `$AZ_BATCH_NODE_SHARED_DIR`).
pub const IMAGE_DIR: &str = "shipyard/charliecloud";

/// Where the job preparation task downloads tarball images (relative to its working directory).
pub const DOWNLOAD_DIR: &str = "shipyard-charliecloud";

/// The Debian/Ubuntu package holding `ch-run`.
pub const RUNTIME_PACKAGE: &str = "charliecloud-runtime";

/// The Debian/Ubuntu package holding `ch-image` and `ch-convert`.
pub const BUILDERS_PACKAGE: &str = "charliecloud-builders";

const TARBALL_SUFFIXES: &[&str] = &[
    ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2",
];

/// A task's `image`, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource<'a> {
    /// An absolute path of an unpacked image directory on the nodes, used as it is.
    Directory(&'a str),
    /// A tarball (`.tar`, `.tar.gz`, `.tgz`, `.tar.xz`, `.tar.bz2`): an `http(s)://` URL the job
    /// preparation task downloads as a resource file, or an absolute path on the nodes. Unpacked
    /// once per node into `$AZ_BATCH_NODE_SHARED_DIR/shipyard/charliecloud/<name>`.
    Tarball {
        /// The URL or path.
        source: &'a str,
        /// True for `http://` and `https://` URLs.
        remote: bool,
    },
    /// A registry reference (`docker://` prefix optional), pulled once per node with
    /// `ch-image` (or `ch-convert -i docker` where Docker is installed).
    Registry(&'a str),
}

impl<'a> ImageSource<'a> {
    /// Classifies `image`.
    pub fn of(image: &'a str) -> ImageSource<'a> {
        let remote = image.starts_with("http://") || image.starts_with("https://");
        let path = image.split(['?', '#']).next().unwrap_or(image);
        if TARBALL_SUFFIXES.iter().any(|s| path.ends_with(s)) && (remote || image.starts_with('/'))
        {
            ImageSource::Tarball {
                source: image,
                remote,
            }
        } else if image.starts_with('/') {
            ImageSource::Directory(image)
        } else {
            ImageSource::Registry(image.strip_prefix("docker://").unwrap_or(image))
        }
    }

    /// The image directory as `ch-run` gets it: the literal path, or a `$AZ_BATCH_NODE_SHARED_DIR`
    /// path for images the preparation task unpacks.
    pub fn run_path(&self, image: &str) -> String {
        match self {
            ImageSource::Directory(p) => (*p).to_string(),
            _ => format!(
                "$AZ_BATCH_NODE_SHARED_DIR/{IMAGE_DIR}/{}",
                unpacked_name(image)
            ),
        }
    }
}

/// The directory name an image is unpacked under: the reference with every character outside
/// `[A-Za-z0-9._-]` replaced by `_` (at most 80 of them), then `-` and a 64-bit FNV-1a hash of
/// the whole reference in hex, so that distinct references never share a directory.
pub fn unpacked_name(image: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in image.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tail: Vec<char> = image.chars().rev().take(80).collect();
    let tail: String = tail.into_iter().rev().collect();
    format!("{}-{hash:016x}", file_name_safe(&tail))
}

/// `{ echo "shipyard: <message> on $(hostname)" >&2; exit <code>; }` with `message` made safe
/// inside double quotes.
pub fn fail(message: &str, code: u8) -> String {
    format!(
        "{{ echo \"shipyard: {} on $(hostname)\" >&2; exit {code}; }}",
        message.replace(['"', '\\', '$', '`'], "_")
    )
}

/// The guard that fails (exit 127) unless `binary` is installed, naming it and its package.
pub fn binary_guard(binary: &str) -> String {
    format!(
        "command -v {} >/dev/null 2>&1 || {}",
        quote(binary),
        fail(
            &format!(
                "{binary} not found (install the package {RUNTIME_PACKAGE}, e.g. in the pool's start task)"
            ),
            127
        )
    )
}

/// The job preparation commands that make `image` ready on a node: fetch and unpack it once
/// (cached across jobs: an existing directory is reused), then create the bind mount point
/// `$AZ_BATCH_NODE_ROOT_DIR` inside it.
pub fn prepare(image: &str) -> String {
    let src = ImageSource::of(image);
    let dir = quote_expanding(&src.run_path(image));
    let mount_point = quote_expanding(&format!("{}$AZ_BATCH_NODE_ROOT_DIR", src.run_path(image)));
    let mut s = String::new();
    let tmp = quote_expanding(&format!("{}.tmp$$", src.run_path(image)));
    // unpack into a temporary directory, then rename it into place (a concurrent preparation
    // of another job loses the race and drops its copy)
    let fill = |fetch: String| {
        format!(
            "if [ ! -d {dir} ]; then mkdir -p \"$AZ_BATCH_NODE_SHARED_DIR/{IMAGE_DIR}\" && rm -rf {tmp} && mkdir {tmp} && {fetch} && {{ mv -T {tmp} {dir} 2>/dev/null || rm -rf {tmp}; }}; fi"
        )
    };
    match src {
        ImageSource::Directory(p) => {
            s.push_str(&format!(
                "test -d {} || {}",
                quote(p),
                fail(&format!("image directory {p} not found"), 1)
            ));
        }
        ImageSource::Tarball { source, remote } => {
            let file = if remote {
                quote_expanding(&format!(
                    "$AZ_BATCH_TASK_WORKING_DIR/{}",
                    download_path(image)
                ))
            } else {
                quote(source)
            };
            s.push_str(&fill(format!(
                "{{ tar -xf {file} -C {tmp} || {}; }}",
                fail(&format!("cannot unpack the image tarball {source}"), 1)
            )));
        }
        ImageSource::Registry(reference) => {
            let r = quote(reference);
            let fetch = format!(
                "{{ if command -v ch-image >/dev/null 2>&1; then ch-image pull {r} && ch-convert -i ch-image {r} {tmp}; \
                 elif command -v ch-convert >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then ch-convert -i docker {r} {tmp}; \
                 else {}; fi || {}; }}",
                fail(
                    &format!(
                        "image {reference} needs ch-image or ch-convert with docker (package {BUILDERS_PACKAGE}); or give the image as a tarball URL"
                    ),
                    127
                ),
                fail(&format!("cannot pull and convert the image {reference}"), 1)
            );
            s.push_str(&fill(fetch));
        }
    }
    s.push_str(&format!(
        "; mkdir -p {mount_point} || {}",
        fail(
            &format!(
                "cannot create the node root directory as a bind mount point in the image {image}"
            ),
            1
        )
    ));
    s
}

/// Where the preparation task's resource file puts a remote tarball (relative to its working
/// directory).
pub fn download_path(image: &str) -> String {
    let path = image.split(['?', '#']).next().unwrap_or(image);
    let suffix = TARBALL_SUFFIXES
        .iter()
        .filter(|s| path.ends_with(*s))
        .max_by_key(|s| s.len())
        .copied()
        .unwrap_or(".tar");
    format!("{DOWNLOAD_DIR}/{}{suffix}", unpacked_name(image))
}
