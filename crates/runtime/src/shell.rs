//! Rendering argv into POSIX shell text: re-exported from [`shipyard_mpi_launch::shell`], the
//! workspace's one implementation (quoting and splitting).

pub use shipyard_mpi_launch::shell::{
    bash_c, join, quote, quote_always, quote_expanding, split, split_plain, SplitError,
};
