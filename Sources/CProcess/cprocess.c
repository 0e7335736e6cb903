#define _GNU_SOURCE
#include <malloc.h>
#include <spawn.h>
#include <sys/prctl.h>
#include "cprocess.h"

int edgefleet_spawn_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

#include <fcntl.h>
#include <unistd.h>

int edgefleet_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int edgefleet_become_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

#include <sys/syscall.h>
#include <unistd.h>

int edgefleet_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    return -1;
#endif
}

int edgefleet_limit_malloc_arenas(int arenas) {
    return mallopt(M_ARENA_MAX, arenas);
}
