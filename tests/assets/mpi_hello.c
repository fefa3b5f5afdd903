/*
 * mpi_hello.c: the smoke-test program shipyard's tests launch on every MPI.
 *
 * Each rank prints one line "hello rank=R size=S host=H", then the ranks sum
 * their ids with MPI_Allreduce; rank 0 prints "allreduce sum=X expected=Y".
 * The exit status is 0 only when the sum is right.
 *
 * Knobs (environment variables):
 *   HELLO_EXPECT_SIZE=N  exit 2 when the world size is not N. A launcher that
 *                        lost its wire-up environment starts N singletons that
 *                        each see size 1; this turns that into a failure.
 *   HELLO_FAIL_RANK=R    rank R exits 3 after the allreduce, without finalizing.
 *   HELLO_PRINT_ENV=VAR  every rank also prints " VAR=<value>" on its line.
 *
 * Build with the compiler wrapper of the MPI that launches it (mpicc.openmpi,
 * mpicc.mpich, ...).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rank = -1, size = 0;
    char host[256] = {0};
    const char *expect = getenv("HELLO_EXPECT_SIZE");
    const char *fail = getenv("HELLO_FAIL_RANK");
    const char *var = getenv("HELLO_PRINT_ENV");
    long mine, sum = -1, expected;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (gethostname(host, sizeof host - 1) != 0)
        host[0] = '?';

    /* Build the whole line first and write it with one call, so that lines of different
     * ranks never interleave when the launcher forwards output unbuffered. */
    {
        char line[1024];
        int len = snprintf(line, sizeof line, "hello rank=%d size=%d host=%s", rank, size, host);
        if (var != NULL && len > 0 && (size_t)len < sizeof line) {
            const char *value = getenv(var);
            len += snprintf(line + len, sizeof line - (size_t)len, " %s=%s", var,
                            value != NULL ? value : "(unset)");
        }
        if (len < 0 || (size_t)len >= sizeof line - 1)
            len = (int)strlen(line);
        line[len++] = '\n';
        fwrite(line, 1, (size_t)len, stdout);
        fflush(stdout);
    }

    mine = rank;
    expected = (long)size * (long)(size - 1) / 2;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);

    if (fail != NULL && atoi(fail) == rank) {
        fprintf(stderr, "hello rank=%d failing on purpose\n", rank);
        fflush(stderr);
        exit(3);
    }
    if (expect != NULL && atoi(expect) != size) {
        fprintf(stderr, "hello rank=%d size=%d but HELLO_EXPECT_SIZE=%s\n", rank, size, expect);
        MPI_Finalize();
        return 2;
    }
    if (rank == 0)
        printf("allreduce sum=%ld expected=%ld\n", sum, expected);
    MPI_Finalize();
    return sum == expected ? 0 : 1;
}
