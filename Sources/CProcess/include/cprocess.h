#ifndef EDGEFLEET_CPROCESS_H
#define EDGEFLEET_CPROCESS_H

#include <spawn.h>

/// posix_spawn_file_actions_addclosefrom_np (glibc >= 2.34), which Swift's Glibc module does
/// not import: the child closes every descriptor from `from` up before it execs.
int edgefleet_spawn_closefrom(posix_spawn_file_actions_t *actions, int from);

/// pipe2(fds, O_CLOEXEC): a pipe whose both ends are close-on-exec from the start, atomically.
int edgefleet_pipe_cloexec(int fds[2]);

/// prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are reparented to this process.
int edgefleet_become_subreaper(void);

/// pidfd_open(pid, 0) (Linux >= 5.3; -1 where it is missing): a descriptor that polls
/// readable once the process has exited, so a wait for it can have a deadline without polling.
int edgefleet_pidfd_open(pid_t pid);

/// mallopt(M_ARENA_MAX, arenas): at most that many malloc arenas for the whole process; call it
/// before other threads allocate. Returns mallopt's result (1 on success).
int edgefleet_limit_malloc_arenas(int arenas);

#endif
