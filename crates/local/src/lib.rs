//! Local backend: run shipyard jobs on this machine with Docker containers as nodes.
