//! Rendering argv into POSIX shell text: re-exported from [`shipyard_mpi_launch::shell`], the
//! workspace's one implementation (quoting and splitting); plus [`file_name_safe`], the names
//! runtimes give files and directories they derive from image references.

pub use shipyard_mpi_launch::shell::{
    bash_c, join, quote, quote_always, quote_expanding, split, split_plain, SplitError,
};

/// `text` with every character outside `[A-Za-z0-9._-]` replaced by `_`: a file name that is
/// also a shell word needing no quotes (`docker://alpine:3` gives `docker___alpine_3`).
pub fn file_name_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_keep_only_portable_characters() {
        assert_eq!(
            super::file_name_safe("docker://alpine:3"),
            "docker___alpine_3"
        );
        assert_eq!(super::file_name_safe("a-b_c.D9"), "a-b_c.D9");
        assert_eq!(super::file_name_safe("é /$"), "____");
    }
}
