/* Temporaries that must not outlive the process: an output's "OUT.tmp.XXXXXX" while it is being
 * written (a file, or a folder of files), and the backup link of a file being replaced. Ctrl-C
 * (SIGINT), SIGTERM, SIGHUP and a closed pipe (SIGPIPE) end Moira as before (by the default action,
 * or by the handler a library such as LLVM had installed), but first remove every temporary
 * registered here. The handler is installed on the first registration, in front of the previous one
 * and not for a signal that is ignored (nohup's SIGHUP stays ignored), and calls only
 * async-signal-safe functions (unlink, open, the getdents64 system call, unlinkat, close, rmdir,
 * sigaction, signal, raise). */
#ifndef MOIRA_RUNTIME_TEMP_CLEANUP_H
#define MOIRA_RUNTIME_TEMP_CLEANUP_H

/* Slots in the table: a command has a few outputs open at once, each with one temporary and at
 * most one backup. */
#define MOIRA_TEMP_CLEANUP_SLOTS 32

/* Remembers `path` (copied; at most PATH_MAX bytes) for removal on a signal. Returns the slot to
 * give to moira_temp_cleanup_forget, or -1 when the path is too long or the table is full: that
 * temporary is then not removed on a signal, which is the only consequence. Thread-safe. */
int moira_temp_cleanup_remember(const char *path);

/* The same for a temporary folder of files (no subfolders, as `moira quantize` builds its output
 * in): on a signal the files in it are removed, then the folder. */
int moira_temp_cleanup_remember_folder(const char *path);

/* The temporary is gone (renamed into place or removed): stop watching it. Accepts -1. */
void moira_temp_cleanup_forget(int slot);

#endif
