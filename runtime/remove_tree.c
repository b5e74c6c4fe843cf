/* Removing a folder tree (runtime/remove_tree.h). */
#include "runtime/remove_tree.h"

#include <ftw.h>
#include <stdio.h>

/* Children come before their folder (FTW_DEPTH), so each folder is empty when it is removed. */
static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void moira_remove_tree(const char *path) {
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}
