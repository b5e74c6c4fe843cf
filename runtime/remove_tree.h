/* Removing a folder a command made for itself (a benchmark's scratch checkpoint, an output that
 * failed half-way), with everything in it. */
#ifndef MOIRA_RUNTIME_REMOVE_TREE_H
#define MOIRA_RUNTIME_REMOVE_TREE_H

/* Removes `path` and all below it, not following links; best effort: the walk stops at the
 * first entry that cannot be removed. */
void moira_remove_tree(const char *path);

#endif
