//! Pure builder of MPI launcher command lines (Open MPI, Intel MPI, MPICH, MS-MPI).
