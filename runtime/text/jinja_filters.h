/* The sequence filters (jinja_filters_seq.c), listed in jinja_filters.c's table. Internal to
 * the Jinja interpreter. */
#ifndef MOIRA_RUNTIME_TEXT_JINJA_FILTERS_H
#define MOIRA_RUNTIME_TEXT_JINJA_FILTERS_H

#include "runtime/text/jinja_internal.h"

jv jj_soft_str(jj_render *r, jv v);
jv jj_f_batch(jj_render *r, jv v, const jj_args *a);
jv jj_f_dictsort(jj_render *r, jv v, const jj_args *a);
jv jj_f_first(jj_render *r, jv v, const jj_args *a);
jv jj_f_items(jj_render *r, jv v, const jj_args *a);
jv jj_f_join(jj_render *r, jv v, const jj_args *a);
jv jj_f_last(jj_render *r, jv v, const jj_args *a);
jv jj_f_length(jj_render *r, jv v, const jj_args *a);
jv jj_f_list(jj_render *r, jv v, const jj_args *a);
jv jj_f_map(jj_render *r, jv v, const jj_args *a);
jv jj_f_max(jj_render *r, jv v, const jj_args *a);
jv jj_f_min(jj_render *r, jv v, const jj_args *a);
jv jj_f_reject(jj_render *r, jv v, const jj_args *a);
jv jj_f_rejectattr(jj_render *r, jv v, const jj_args *a);
jv jj_f_reverse(jj_render *r, jv v, const jj_args *a);
jv jj_f_select(jj_render *r, jv v, const jj_args *a);
jv jj_f_selectattr(jj_render *r, jv v, const jj_args *a);
jv jj_f_sort(jj_render *r, jv v, const jj_args *a);
jv jj_f_sum(jj_render *r, jv v, const jj_args *a);
jv jj_f_unique(jj_render *r, jv v, const jj_args *a);

#endif
