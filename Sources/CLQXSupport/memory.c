#define _GNU_SOURCE
#include "lqx_support.h"

#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

/* Unmaps the resident pages of read-only, file-backed private mappings (program and library code
 * and constants) that hold no private copy of any page, and returns free heap memory to the
 * kernel. The pages stay in the page cache and come back on the next touch by a minor fault; what
 * the process does not touch again stops counting against it, and the guest can reclaim it.
 *
 * A mapping is released only when it is not writable, not shared, backed by a file and its smaps
 * entry shows `Anonymous: 0 kB`: such a mapping's contents are exactly the file's, so dropping the
 * page table entries cannot lose data. Relocated (RELRO) or written pages are anonymous and make
 * their mapping ineligible. */
long lqx_release_clean_mappings(void) {
    malloc_trim(0);
    FILE *smaps = fopen("/proc/self/smaps", "re");
    if (smaps == NULL) return -1;
    char line[512];
    unsigned long start = 0, end = 0;
    int eligible = 0;
    long rss_kb = 0, anon_kb = -1, released = 0;
    /* Each mapping: a header line, then "Key: value" lines; decide on reaching the next header. */
    for (;;) {
        char *got = fgets(line, sizeof line, smaps);
        int header = 0;
        unsigned long s = 0, e = 0;
        char perms[5] = {0};
        /* Only header lines start with "start-end perms"; no smaps key is hex digits then '-'. */
        if (got != NULL && sscanf(line, "%lx-%lx %4s", &s, &e, perms) == 3) header = 1;
        if (got == NULL || header) {
            if (eligible && rss_kb > 0 && anon_kb == 0 && madvise((void *)start, end - start, MADV_DONTNEED) == 0) {
                released += rss_kb;
            }
            if (got == NULL) break;
            start = s;
            end = e;
            rss_kb = 0;
            anon_kb = -1;
            const char *path = strchr(line, '/');
            eligible = perms[1] == '-' && perms[3] == 'p' && path != NULL;
            continue;
        }
        long value = 0;
        if (sscanf(line, "Rss: %ld kB", &value) == 1) rss_kb = value;
        else if (sscanf(line, "Anonymous: %ld kB", &value) == 1) anon_kb = value;
    }
    fclose(smaps);
    return released;
}
