//! Singularity/Apptainer runtime for shipyard: host mpirun wrapping singularity exec.
