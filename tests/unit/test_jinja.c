/* The Jinja interpreter (runtime/text/jinja.h) against expected texts written by hand for small
 * templates, one or more per feature: whitespace control with trim_blocks and lstrip_blocks,
 * literals, operators, printing as Python prints, slices, loops, scoping, macros, filters, tests,
 * methods, globals, tojson; then syntax and runtime errors located at line:col, the limits that
 * stop hostile templates, and the real DeepSeek-V3 chat template on a tool-calling conversation.
 *
 * Every expected text was checked against Python Jinja2 3.1 configured as transformers configures
 * it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, its tojson,
 * raise_exception and strftime_now). @huggingface/jinja 0.5.13 agrees on the DeepSeek templates
 * but not on many of these small cases (it prints true/false, None as "", lists as JSON, lacks
 * several filters); where they differ the expectation is Python's, which is what the models'
 * templates are written for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "runtime/read_file.h"
#include "runtime/text/jinja.h"
#include "testing.h"

static const char *const table_context =
    "{"
    "\"msgs\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"cont"
    "ent\": \"héllo\"}, {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\""
    ": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"x\": 1}}}]}],"
    "\"d\": {\"b\": 2, \"a\": 1, \"C\": 3},"
    "\"l\": [3, 1, 2],"
    "\"s\": \"  Hi There  \","
    "\"n\": 7,"
    "\"x\": 2.5,"
    "\"e\": [],"
    "\"t\": true,"
    "\"z\": null,"
    "\"users\": [{\"name\": \"bob\", \"age\": 30}, {\"name\": \"Ann\", \"age\": 25}, {\"name\":"
    " \"cy\", \"age\": 30}],"
    "\"words\": [\"b\", \"A\", \"a\", \"C\"],"
    "\"u\": \"日本語テキスト\""
    "}";

static const struct {
    const char *source, *expected;
} table[] = {
    /* text, whitespace control, trim_blocks and lstrip_blocks */
    {"plain text", "plain text"},
    {"a  {{- 'x' -}}  b", "axb"},
    {"a\n  {{ 'x' }}\nb", "a\n  x\nb"},
    {"a  {%- if true -%}  b  {%- endif -%}  c", "abc"},
    {"a\n  {% if true %}\n    b\n  {% endif %}\nc", "a\n    b\nc"},
    {"x  {% if true %}y{% endif %}", "x  y"},
    {"  {% if true %}x{% endif %}", "x"},
    {"a\n  {%+ if true %}b{% endif %}", "a\n  b"},
    {"a\n{% if true +%}\nb{% endif %}", "a\n\nb"},
    {"a\n  {# note #}\nb", "a\nb"},
    {"a {#- note -#} b", "ab"},
    {"{% for i in [1, 2] %}\n{{ i }}\n{% endfor %}\n", "1\n2\n"},
    {"one\n\n", "one\n"},
    {"a\r\nb\rc", "a\nb\nc"},
    {"{% raw %}{{ kept }} {% if %}{% endraw %}", "{{ kept }} {% if %}"},
    {"{{ {'k': {'j': 1}} }}", "{'k': {'j': 1}}"},
    {"{% set v = [\n  1,\n  2\n] %}{{ v }}", "[1, 2]"},
    {"a　{%- if true %}b{% endif %}", "ab"},
    /* literals */
    {"{{ 'a\\nb' }}|{{ \"\\t\\u00e9\\x41\\101\\\\\" }}|{{ 'a' 'b' }}|{{ '\\d' }}",
     "a\nb|\téAA\\|ab|\\d"},
    {"{{ 1_000 }} {{ 0x10 }} {{ 0b11 }} {{ 0o17 }} {{ 1.5e3 }} {{ 12.0 }}",
     "1000 16 3 15 1500.0 12.0"},
    {"{{ true }} {{ False }} {{ none }} {{ None }}", "True False None None"},
    /* operators */
    {"{{ 1 + 2 * 3 - 4 / 2 }}", "5.0"},
    {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }}",
     "3 -4 1 2 3.0 0.5"},
    {"{{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 3 ** 2 }}", "1024 0.5 64"},
    {"{{ 'a' ~ 1 ~ none ~ true ~ 1.5 }}", "a1NoneTrue1.5"},
    {"{{ 'ab' + 'cd' }} {{ [1] + [2] }} {{ 'ab' * 2 }} {{ [0] * 3 }}",
     "abcd [1, 2] abab [0, 0, 0]"},
    {"{{ -n }} {{ +n }} {{ 10 - 2 - 3 }} {{ 100 / 10 / 4 }}", "-7 7 5 2.5"},
    {"{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' != 'b' }} {{ [1, 2] == [1, 2] }} {{ d == {'a': 1, '"
     "b': 2, 'C': 3} }}",
     "True True True True True"},
    {"{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'ab' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 2 >= 2.0 }}",
     "True False True True True"},
    {"{{ 'a' in 'cat' }} {{ 'x' not in 'cat' }} {{ 1 in l }} {{ 'a' in d }} {{ 'zz' in d }} {{ "
     "not 4 in l }}",
     "True True True True False True"},
    {"{{ 0 or 'x' }} {{ 1 and 'y' }} {{ 0 and 'y' }} {{ none or none }} {{ not none }} {{ not '"
     "a' }}",
     "x y 0 None True False"},
    {"{{ 1 if t else 2 }} {{ 1 if z else 2 }} [{{ 1 if z }}] {{ 'yes' if 'a' in d else 'no' }}",
     "1 2 [] yes"},
    /* printing values as Python does */
    {"{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 1.0 }} {{ -0.0 }} {{ 1e-5 }} {{ 0.0001 }} {{ 1 /"
     " 3 }} {{ 1e100 }}",
     "0.30000000000000004 1e+16 1000000000000000.0 1.0 -0.0 1e-05 0.0001 0.3333333333333333 1e+"
     "100"},
    {"{{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}] }} {{ (1,) }} {{ (1, 2) }} {{ () }} {{ {} }"
     "}",
     "[1, 'a', None, True, 1.5, [2], {'k': 'v'}] (1,) (1, 2) () {}"},
    {"{{ [\"it's\", 'say \"hi\"', \"both ' \\\"\"] }}", "[\"it's\", 'say \"hi\"', 'both \\' \"']"},
    {"{{ ['\\n\\t\\\\', '\\x01', 'é', '\\u3000'] }}", "['\\n\\t\\\\', '\\x01', 'é', '\\u3000']"},
    {"{{ msgs[0] }}", "{'role': 'system', 'content': 'Be brief.'}"},
    {"{{ undefined_name }}|{{ z }}|{{ d.missing }}|{{ d['missing'] }}|{{ l[10] }}|{{ none.attr "
     "}}",
     "|None||||"},
    /* subscripts and slices (code points, as Python) */
    {"{{ 'abc'[0] }}{{ 'abc'[-1] }} {{ u[1] }} {{ u[2:4] }} {{ u|length }}", "ac 本 語テ 7"},
    {"{{ 'abcdef'[::2] }} {{ 'abcdef'[::-1] }} {{ 'abc'[5:] }}|{{ 'abc'[:-5] }}", "ace fedcba |"},
    {"{{ l[1:] }} {{ l[::-1] }} {{ l[-2:] }} {{ [0, 1, 2, 3, 4, 5, 6][5:1:-2] }} {{ l[1:2:0] if"
     " false else 'ok' }}",
     "[1, 2] [2, 1, 3] [1, 2] [5, 3] ok"},
    {"{{ msgs[2].tool_calls[0].function.name }} {{ msgs[-1]['tool_calls'][0]['function']['argum"
     "ents'].x }} {{ l.1 }}",
     "f 1 1"},
    /* if, for, loop variables, loop controls */
    {"{% if false %}a{% elif z %}b{% elif n > 5 %}c{% else %}d{% endif %}", "c"},
    {"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", "b=2;a=1;C=3;"},
    {"{% for x in l if x > 1 %}{{ loop.index }}/{{ loop.length }}:{{ x }}{% if not loop.last %}"
     ",{% endif %}{% endfor %}",
     "1/2:3,2/2:2"},
    {"{% for x in e %}no{% else %}empty{% endfor %}", "empty"},
    {"{% for x in l %}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }};"
     "{% endfor %}",
     "032True;121False;210False;"},
    {"{% for x in l %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}", "[|1][3|2][1|]"},
    {"{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %"
     "}{% endif %}{{ x }}{% endfor %}",
     "0134"},
    {"{% for i in range(3) %}{% for j in range(2) %}{{ loop.index }}{% endfor %}{{ loop.index }"
     "}{% endfor %}",
     "121122123"},
    {"{% for x in l %}{{ loop.cycle('a', 'b') }}{% endfor %}", "aba"},
    {"{% for c in 'héy' %}{{ c }}.{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{% for x in "
     "undefined_name %}x{% endfor %}",
     "h.é.y.|baC|"},
    /* set, namespace, scoping */
    {"{% set ns = namespace(total=0, seen=[]) %}{% for x in l %}{% set ns.total = ns.total + x "
     "%}{% set ns.seen = ns.seen + [x] %}{% endfor %}{{ ns.total }} {{ ns.seen }}",
     "6 [3, 1, 2]"},
    {"{% set a, b = 1, 2 %}{{ a }}{{ b }}", "12"},
    {"{% set q %}block {{ n }}{% endset %}[{{ q }}]", "[block 7]"},
    {"{% set q | upper %}shout{% endset %}{{ q }}", "SHOUT"},
    {"{% set v = 5 %}{% for i in l %}{% set v = i %}{% endfor %}{{ v }}", "5"},
    {"{% set v = 0 %}{% for i in [1, 2] %}{{ v }}{% set v = i %}{{ v }}{% endfor %}", "0102"},
    {"{% set v = 1 %}{% macro m() %}{{ v }}{% endmacro %}{% set v = 2 %}{{ m() }}", "2"},
    {"{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", "3[]"},
    {"{{ namespace(a=1) }} {{ namespace({'b': 2}, c=3).c }} {{ dict(a=1, b='x') }}",
     "<Namespace {'a': 1}> 3 {'a': 1, 'b': 'x'}"},
    /* macros and call blocks */
    {"{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ gree"
     "t('Bob') }} {{ greet('Al', greeting='Hi') }} {{ greet() }}",
     "Hello, Bob! Hi, Al! Hello, !"},
    {"{% macro v() %}{{ varargs }}{{ kwargs }}{% endmacro %}{{ v(1, 2, k=3) }}", "(1, 2){'k': 3}"},
    {"{% macro w(x) %}[{{ caller() }}{{ x }}]{% endmacro %}{% call w(1) %}body{% endcall %}",
     "[body1]"},
    {"{% macro w() %}{{ caller(5) }}{% endmacro %}{% call(v) w() %}<{{ v }}>{% endcall %}", "<5>"},
    {"{% macro r(k) %}{% if k > 0 %}{{ k }}{{ r(k - 1) }}{% endif %}{% endmacro %}{{ r(5) }}",
     "54321"},
    {"{% macro m(a, b=a * 2) %}{{ a }},{{ b }}{% endmacro %}{{ m(3) }}", "3,6"},
    /* filters */
    {"{{ s|trim }}|{{ 'xxhixx'|trim('x') }}|{{ s|upper }}|{{ s|lower }}",
     "Hi There|hi|  HI THERE  |  hi there  "},
    {"{{ 'hello world-foo(bar'|title }} {{ 'hELLO wORLD'|capitalize }}",
     "Hello World-Foo(Bar Hello world"},
    {"{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 123|string ~ '!' }}",
     "bbb bba 123!"},
    {"{{ s|length }} {{ l|count }} {{ d|length }} {{ u|length }} {{ undefined_name|length }}",
     "12 3 3 7 0"},
    {"{{ '42'|int }} {{ ' 4_2 '|int }} {{ 'x'|int }} {{ 'x'|int(5) }} {{ '3.7'|int }} {{ 3.7|in"
     "t }} {{ '1A'|int(0, 16) }}",
     "42 42 0 5 3 3 26"},
    {"{{ '2.5'|float }} {{ 'a'|float }} {{ 3|float }} {{ -3|abs }} {{ -2.5|abs }}",
     "2.5 0.0 3.0 3 2.5"},
    {"{{ l|first }} {{ l|last }} [{{ e|first }}] {{ 'abc'|first }} {{ d|first }}", "3 2 [] a b"},
    {"{{ l|join }} {{ l|join(', ') }} {{ users|join('/', attribute='name') }}",
     "312 3, 1, 2 bob/Ann/cy"},
    {"{{ undefined_name|default('dflt') }} [{{ ''|default('dflt') }}] {{ ''|default('dflt', tru"
     "e) }} {{ none|d('x', boolean=true) }} {{ z|default('y') }}",
     "dflt [] dflt x None"},
    {"{{ 'abc'|list }} {{ d|list }} {{ l|reverse|list }} {{ 'abc'|reverse }}",
     "['a', 'b', 'c'] ['b', 'a', 'C'] [2, 1, 3] cba"},
    {"{{ l|sort }} {{ l|sort(reverse=true) }} {{ words|sort }} {{ words|sort(case_sensitive=tru"
     "e) }}",
     "[1, 2, 3] [3, 2, 1] ['A', 'a', 'b', 'C'] ['A', 'C', 'a', 'b']"},
    {"{{ users|sort(attribute='age')|map(attribute='name')|join(',') }} {{ users|sort(attribute"
     "='age,name')|map(attribute='name')|join(',') }}",
     "Ann,bob,cy Ann,bob,cy"},
    {"{{ words|unique|list }} {{ words|unique(case_sensitive=true)|list }}",
     "['b', 'A', 'C'] ['b', 'A', 'a', 'C']"},
    {"{{ users|map(attribute='name')|list }} {{ words|map('lower')|list }} {{ users|map(attribu"
     "te='nope', default='-')|join }}",
     "['bob', 'Ann', 'cy'] ['b', 'a', 'a', 'c'] ---"},
    {"{{ users|selectattr('age', 'equalto', 30)|map(attribute='name')|list }} {{ users|rejectat"
     "tr('age', 'eq', 30)|map(attribute='name')|list }}",
     "['bob', 'cy'] ['Ann']"},
    {"{{ l|select('odd')|list }} {{ l|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|lis"
     "t }} {{ msgs|selectattr('tool_calls', 'defined')|list|length }}",
     "[3, 1] [2] [1, 'a'] 1"},
    {"{{ d|items|list }} {{ d|dictsort }} {{ d|dictsort(by='value', reverse=true) }}",
     "[('b', 2), ('a', 1), ('C', 3)] [('a', 1), ('b', 2), ('C', 3)] [('C', 3), ('b', 2), ('a', "
     "1)]"},
    {"{{ l|min }} {{ l|max }} {{ l|sum }} {{ users|sum(attribute='age') }} {{ words|min }} {{ ("
     "users|max(attribute='age')).name }} [{{ d|attr('a') }}]",
     "1 3 6 85 A bob []"},
    {"{{ \"line1\\nline2\\n\\nline4\"|indent }}|{{ 'a\\nb'|indent(2, first=true) }}|{{ 'a\\n\\n"
     "b'|indent(2, blank=true) }}",
     "line1\n    line2\n\n    line4|  a\n  b|a\n  \n  b"},
    {"{{ '<a href=\"x\">&\\'</a>'|e }} {{ '<b>'|safe }} {{ 'a b  c'|wordcount }}",
     "&lt;a href=&#34;x&#34;&gt;&amp;&#39;&lt;/a&gt; <b> 3"},
    {"{{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 2.9|ro"
     "und(method='floor') }} {{ 5|round }}",
     "2.0 4.0 2.67 3.0 2.0 5"},
    {"{{ l|batch(2)|list }} {{ l|batch(2, 'x')|list }}", "[[3, 1], [2]] [[3, 1], [2, 'x']]"},
    /* tojson (transformers: ensure_ascii=False, separators ', ' and ': ', key order kept) */
    {"{{ d|tojson }} {{ msgs[2].tool_calls[0]|tojson }}",
     "{\"b\": 2, \"a\": 1, \"C\": 3} {\"type\": \"function\", \"function\": {\"name\": \"f\", "
     "\"arguments\": {\"x\": 1}}}"},
    {"{{ 'héllo \"q\"\\n'|tojson }} {{ [1, 2.0, none, true, 'x']|tojson }}",
     "\"héllo \\\"q\\\"\\n\" [1, 2.0, null, true, \"x\"]"},
    {"{{ [1, [2, {}], []]|tojson(indent=2) }}", "[\n  1,\n  [\n    2,\n    {}\n  ],\n  []\n]"},
    {"{{ d|tojson(sort_keys=true) }} {{ 'é'|tojson(ensure_ascii=true) }} {{ d|tojson(separators"
     "=(',', ':')) }}",
     "{\"C\": 3, \"a\": 1, \"b\": 2} \"\\u00e9\" {\"b\":2,\"a\":1,\"C\":3}"},
    /* tests */
    {"{{ n is odd }} {{ n is even }} {{ n is divisibleby 7 }} {{ n is divisibleby(3) }}",
     "True False True False"},
    {"{{ y is defined }} {{ y is undefined }} {{ z is none }} {{ t is boolean }} {{ t is true }"
     "} {{ false is false }}",
     "False True True True True True"},
    {"{{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }} {{ true is number }} {{ 's' i"
     "s string }} {{ d is mapping }} {{ l is iterable }} {{ 's' is sequence }} {{ 1 is iterable"
     " }}",
     "True False True True True True True True False"},
    {"{{ 1 is eq 1 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} {{ 1 is le 1 }} {{ 2 is gt 1 }} {{ 2 is g"
     "e 3 }} {{ 2 is in [1, 2] }} {{ 3 is equalto 3 }}",
     "True True True True True False True True"},
    {"{{ 'ab' is lower }} {{ 'AB' is upper }} {{ 'A1' is upper }} {{ range is callable }} {{ 'x"
     "' is callable }} {{ z is not none }}",
     "True True True True False False"},
    /* str, dict and list methods */
    {"{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\\u3000a"
     "\\u3000'.strip() }}",
     "Hi There|Hi There  |  Hi There|hi|a"},
    {"{{ 'a,b,,c'.split(',') }} {{ ' a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a,b,c'"
     ".rsplit(',', 1) }} {{ 'a b c d'.rsplit(none, 2) }}",
     "['a', 'b', '', 'c'] ['a', 'b', 'c'] ['a', 'b c'] ['a,b', 'c'] ['a b', 'c', 'd']"},
    {"{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'hello'.startswith("
     "'l', 2) }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'abc'.replace('', '-') }}",
     "True True True bba -a-b-c-"},
    {"{{ 'hello'.upper() }} {{ 'HeLLo'.lower() }} {{ \"they're bill's\".title() }} {{ 'hELLO'.c"
     "apitalize() }}",
     "HELLO hello They'Re Bill'S Hello"},
    {"{{ 'héllo'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ 'hello'.count"
     "('l') }} {{ '-'.join(['a', 'b']) }} {{ '{}-{}'.format(1, 'b') }}",
     "2 3 -1 2 a-b 1-b"},
    {"{{ d.items()|list }} {{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get("
     "'q') }} {{ d.get('q', 5) }} {{ l.index(2) }} {{ l.count(3) }}",
     "[('b', 2), ('a', 1), ('C', 3)] ['b', 'a', 'C'] [2, 1, 3] 1 None 5 2 1"},
    /* globals */
    {"{{ range(5)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ range(0)|lis"
     "t }}",
     "[0, 1, 2, 3, 4] [1, 4, 7] [5, 3, 1] []"},
    {"{% generation %}kept{% endgeneration %}", "kept"},
    {"{{ strftime_now('') }}|{{ strftime_now('%%') }}", "|%"},
    /* generators: map, select, reject, unique, batch, items and reverse give one-shot iterators */
    {"{% if e|select %}true even when empty{% endif %}", "true even when empty"},
    {"{% set g = l|map('string') %}{{ g|join }}|{{ g|join }}|{{ g|list }}", "312||[]"},
    {"{% set g = words|select('lower') %}{{ g|first }} {{ g|list }}", "b ['a']"},
    {"{{ l|select('odd')|list|length }} {{ (l|reverse)[0] }}|{{ users|selectattr('age', 'gt', 2"
     "6)|list|last }}",
     "2 |{'name': 'cy', 'age': 30}"},
    {"{{ l|map('string') is sequence }} {{ l|map('string') is iterable }} {{ l|list is sequence"
     " }}",
     "False True True"},
    /* printf-style formatting, *args and **kwargs */
    {"{{ '%s-%d' % ('a', 3) }}|{{ '%5.2f|%-6s|%06.1f|%x' % (3.14159, 'ab', 2.5, 255) }}|{{ '%(a"
     ")s=%(b)d' % {'a': 'k', 'b': 2} }}|{{ '100%%' % () }}|{{ '%.3s' % 'héllo' }}",
     "a-3| 3.14|ab    |0002.5|ff|k=2|100%|hél"},
    {"{% macro m(a, b, c=3) %}{{ a }}{{ b }}{{ c }}{% endmacro %}{{ m(*[1, 2]) }} {{ m(1, **{'b"
     "': 5, 'c': 6}) }}",
     "123 156"},
    {"{{ 2.5 is odd }} {{ 3.0 is odd }} {{ 4.0 is even }} {{ 7 is divisibleby 2.5 }}",
     "False True True False"},
    {"{{ '%s, %s!'|format('Hello', 'you') }} {{ '%(n)d items'|format(n=3) }}",
     "Hello, you! 3 items"},
};

/* Parses and renders `source` with the variables of `context_json` (NULL: none). */
static moira_status_t render(const char *source, const char *context_json, char **out,
                             size_t *len) {
    json_t *context = NULL;
    if (context_json) {
        json_error_t error;
        context = json_loads(context_json, 0, &error);
        if (!context) return moira_status_make(MOIRA_CODE_INTERNAL, "test context: %s", error.text);
    }
    moira_jinja_template_t *tmpl = NULL;
    moira_status_t status = moira_jinja_parse(source, strlen(source), "chat_template", &tmpl);
    if (!status) status = moira_jinja_render(tmpl, context, out, len);
    moira_jinja_free(tmpl);
    json_decref(context);
    return status;
}

static void expect_text(const char *source, const char *context_json, const char *expected) {
    char *out = NULL;
    size_t len = 0;
    moira_status_t status = render(source, context_json, &out, &len);
    moira_test_checks++;
    if (status) {
        moira_test_fail(__FILE__, __LINE__, "%.200s: %.300s", source, moira_status_message(status));
        moira_status_free(status);
        return;
    }
    if (len != strlen(expected) || memcmp(out, expected, len) != 0)
        moira_test_fail(__FILE__, __LINE__, "%.200s\n  rendered: [%.*s]\n  expected: [%s]", source,
                        (int)(len > 300 ? 300 : len), out, expected);
    free(out);
}

/* The render fails with INVALID_INPUT and exactly `message` (location included). */
static void expect_error(const char *source, const char *context_json, const char *message) {
    char *out = NULL;
    size_t len = 0;
    moira_status_t status = render(source, context_json, &out, &len);
    moira_test_checks++;
    if (moira_status_code(status) != MOIRA_CODE_INVALID_INPUT ||
        strcmp(moira_status_message(status), message) != 0)
        moira_test_fail(
            __FILE__, __LINE__, "%.200s\n  got:      %s %s\n  expected: INVALID_INPUT %s", source,
            moira_code_name(moira_status_code(status)), moira_status_message(status), message);
    moira_status_free(status);
    free(out);
}

/* The render fails with INVALID_INPUT and a message containing `part` (limits, whose messages
 * carry no fixed location). */
static void expect_error_part(const char *source, const char *context_json, const char *part) {
    char *out = NULL;
    size_t len = 0;
    moira_status_t status = render(source, context_json, &out, &len);
    moira_test_checks++;
    if (moira_status_code(status) != MOIRA_CODE_INVALID_INPUT ||
        !strstr(moira_status_message(status), part))
        moira_test_fail(
            __FILE__, __LINE__, "%.60s...\n  got:      %s %s\n  expected: INVALID_INPUT ...%s...",
            source, moira_code_name(moira_status_code(status)), moira_status_message(status), part);
    moira_status_free(status);
    free(out);
}

static void test_table(void) {
    for (size_t i = 0; i < sizeof(table) / sizeof(*table); i++)
        expect_text(table[i].source, table_context, table[i].expected);
}

static void test_syntax_errors(void) {
    expect_error("{% if true %}abc", NULL,
                 "chat_template:1:17: expected 'elif', 'else' or 'endif', got end of template");
    expect_error("Hello\n{% for m in messages %}\n{{ m.role }}\n", NULL,
                 "chat_template:3:13: expected 'endfor' or 'else', got end of template");
    expect_error("{% if x %}{% endfor %}", NULL,
                 "chat_template:1:14: expected 'elif', 'else' or 'endif', got 'endfor'");
    expect_error("line1\n  {% endif %}", NULL,
                 "chat_template:2:6: unexpected 'endif' (no block is open)");
    expect_error("{{ 1 +  }}", NULL, "chat_template:1:9: unexpected end of print statement");
    expect_error("{{ (1, 2 }}", NULL, "chat_template:1:10: unexpected '}', expected ')'");
    expect_error("{{ x ]}}", NULL, "chat_template:1:6: unexpected ']'");
    expect_error("{% foo %}", NULL, "chat_template:1:4: unknown tag 'foo'");
    expect_error("{{ 'abc }}", NULL, "chat_template:1:4: unterminated string literal");
    expect_error("{{ a ! b }}", NULL, "chat_template:1:6: unexpected character '!'");
    expect_error("{# open", NULL, "chat_template:1:1: missing end of comment tag");
    expect_error("{% raw %}abc", NULL, "chat_template:1:1: missing end of raw directive");
    expect_error("{% set %}", NULL,
                 "chat_template:1:8: expected an expression, got end of statement block");
    expect_error("{% macro m(a=1, b) %}{% endmacro %}", NULL,
                 "chat_template:1:17: non-default argument follows default argument");
    expect_error("{% break %}", NULL, "chat_template:1:4: 'break' outside of a for loop");
    expect_error("{% include 'other.jinja' %}", NULL,
                 "chat_template:1:4: the 'include' tag is not supported (a chat template is a "
                 "single template)");
    expect_error("ok\n\xff", NULL, "chat_template:2:1: template is not valid UTF-8");
}

static void test_runtime_errors(void) {
    const char *one_system = "{\"messages\": [{\"role\": \"system\"}]}";
    expect_error("{% if messages[0]['role'] != 'user' %}"
                 "{{ raise_exception('Conversation must start with a user message') }}{% endif %}",
                 one_system, "chat_template:1:42: Conversation must start with a user message");
    expect_error("{{ messages[0].content.strip() }}", one_system,
                 "chat_template:1:23: 'dict object' has no attribute 'content'");
    expect_error("{{ foo.bar }}", NULL, "chat_template:1:7: 'foo' is undefined");
    expect_error("{{ none.x.y }}", NULL, "chat_template:1:10: 'None' has no attribute 'x'");
    expect_error("{{ 'a' + 1 }}", NULL,
                 "chat_template:1:8: can only concatenate str (not \"int\") to str");
    expect_error("{% for m in messages %}\n{{ m.role + 1 }}\n{% endfor %}", one_system,
                 "chat_template:2:11: can only concatenate str (not \"int\") to str");
    expect_error("{{ 1 // 0 }}", NULL, "chat_template:1:6: integer division or modulo by zero");
    expect_error("{{ x | nofilter }}", NULL, "chat_template:1:8: No filter named 'nofilter'.");
    expect_error("{{ x is nontest }}", NULL, "chat_template:1:6: No test named 'nontest'.");
    expect_error("{% for a, b in [1] %}{% endfor %}", NULL,
                 "chat_template:1:8: cannot unpack non-iterable int object");
    expect_error("{% set l = [] %}{{ l.append(1) }}", NULL,
                 "chat_template:1:21: access to attribute 'append' of 'list' object is unsafe.");
    expect_error("{% set x = 1 %}{% set x.y = 2 %}", NULL,
                 "chat_template:1:23: cannot assign attribute on non-namespace object");
    expect_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", NULL,
                 "chat_template:1:34: macro 'm' takes not more than 1 argument(s)");
    expect_error("{{ [1, 'a']|sort }}", NULL,
                 "chat_template:1:13: '<' not supported between instances of 'str' and 'int'");
    expect_error("{{ undefined_thing|tojson }}", NULL,
                 "chat_template:1:20: Object of type Undefined is not JSON serializable");
    expect_error("{{ d[1:] }}", "{\"d\": {}}", "chat_template:1:5: unhashable type: 'slice'");
    expect_error("{{ 5|indent }}", NULL,
                 "chat_template:1:6: unsupported operand type(s) for +=: 'int' and 'str'");
    expect_error("{{ [1]|map('string')|length }}", NULL,
                 "chat_template:1:22: object of type 'generator' has no len()");
    expect_error("{{ [1]|select|last }}", NULL,
                 "chat_template:1:15: 'generator' object is not reversible");
    expect_error("{{ 5|items|list }}", NULL,
                 "chat_template:1:12: Can only get item pairs from a mapping.");
    expect_error("{{ '%s %s' % (1,) }}", NULL,
                 "chat_template:1:12: not enough arguments for format string");
    expect_error("{{ '%d' % 'x' }}", NULL,
                 "chat_template:1:9: %d format: a real number is required, not str");
    expect_error("{{ 2.0 ** 10000 }}", NULL,
                 "chat_template:1:8: (34, 'Numerical result out of range')");
    expect_error("{{ range(200000)|length }}", NULL,
                 "chat_template:1:4: Range too big. The sandbox blocks ranges larger than "
                 "MAX_RANGE (100000).");
}

/* Nested brackets, blocks or `not`s past the parser's depth limit. */
static char *repeated(const char *head, const char *unit, size_t times, const char *tail) {
    size_t n = strlen(head) + strlen(unit) * times + strlen(tail) + 1;
    char *s = malloc(n);
    if (!s) return NULL;
    strcpy(s, head);
    for (size_t i = 0; i < times; i++)
        strcat(s, unit);
    strcat(s, tail);
    return s;
}

static void test_limits(void) {
    expect_error_part("{% set big = 'x' * 1024 %}{% for i in range(100000) %}{{ big }}{% endfor %}",
                      NULL, "rendered text exceeds 64 MiB");
    expect_error_part("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
                      "{% endfor %}",
                      NULL, "too many loop iterations (more than 10000000)");
    expect_error_part("{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}", NULL,
                      "macro calls nest too deeply (more than 256)");
    expect_error_part("{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                      "{% set ns.s = ns.s + ns.s %}{% endfor %}",
                      NULL, "template needs more than 256 MiB of memory");
    expect_error_part("{{ 'x' * 1000000000000 }}", NULL, "string repetition too large");
    expect_error_part("{% set s = 'x' * 10000000 %}{% for i in range(100000) %}"
                      "{% if 'y' in s %}{% endif %}{% endfor %}",
                      NULL, "template exceeded its work limit");
    expect_error_part("{% set ns = namespace(v=[]) %}{% for i in range(5000) %}"
                      "{% set ns.v = [ns.v] %}{% endfor %}{{ ns.v }}",
                      NULL, "template nests too deeply (more than 2000 levels of evaluation)");
    expect_error_part("{{ 2 ** 64 }}", NULL, "integer overflow");

    char *s = repeated("{{ ", "(", 300, "1 }}");
    expect_error_part(s, NULL, "brackets nest too deeply");
    free(s);
    s = repeated("", "{% if true %}", 300, "");
    expect_error_part(s, NULL, "template nests too deeply (more than 256 levels)");
    free(s);
    s = repeated("{{ ", "not ", 1000, "1 }}");
    expect_error_part(s, NULL, "template nests too deeply (more than 256 levels)");
    free(s);
    s = repeated("{{ 1", " + 1", 1000, " }}");
    expect_text(s, NULL, "1001");
    free(s);
    /* a + b + c ... is a left-leaning tree as deep as it is long */
    s = repeated("{{ 1", " + 1", 100000, " }}");
    expect_error_part(s, NULL, "template nests too deeply (more than 2000 levels of evaluation)");
    free(s);

    /* Variables nested past what a template may walk are refused before rendering. */
    json_t *deep = json_array();
    for (int i = 0; i < 1000; i++) {
        json_t *outer = json_array();
        json_array_append_new(outer, deep);
        deep = outer;
    }
    json_t *context = json_pack("{s:o}", "v", deep);
    moira_jinja_template_t *tmpl = NULL;
    CHECK_OK(moira_jinja_parse("{{ v }}", 7, "chat_template", &tmpl));
    char *out = NULL;
    size_t len = 0;
    moira_status_t status = moira_jinja_render(tmpl, context, &out, &len);
    CHECK(moira_status_code(status) == MOIRA_CODE_INVALID_INPUT);
    CHECK(strstr(moira_status_message(status), "template variables nest too deeply") != NULL);
    moira_status_free(status);
    moira_jinja_free(tmpl);
    json_decref(context);
}

static void test_api(void) {
    moira_jinja_template_t *tmpl = NULL;
    char *out = NULL;
    size_t len = 0;
    CHECK_CODE(moira_jinja_parse(NULL, 3, "x", &tmpl), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_CODE(moira_jinja_parse("x", 1, "x", NULL), MOIRA_CODE_INVALID_ARGUMENT);
    CHECK_CODE(moira_jinja_render(NULL, NULL, &out, &len), MOIRA_CODE_INVALID_ARGUMENT);
    moira_jinja_free(NULL);

    /* A parsed template renders any number of times; an empty one renders nothing. */
    const char *src = "{{ greeting }}, {{ name|default('world') }}!";
    CHECK_OK(moira_jinja_parse(src, strlen(src), NULL, &tmpl));
    json_t *context = json_pack("{s:s}", "greeting", "Hello");
    for (int i = 0; i < 2; i++) {
        CHECK_OK(moira_jinja_render(tmpl, context, &out, &len));
        CHECK(out && len == 13 && strcmp(out, "Hello, world!") == 0);
        free(out);
        out = NULL;
    }
    json_t *not_object = json_array();
    CHECK_CODE(moira_jinja_render(tmpl, not_object, &out, &len), MOIRA_CODE_INVALID_ARGUMENT);
    json_decref(not_object);
    json_decref(context);
    moira_jinja_free(tmpl);
    CHECK_OK(moira_jinja_parse("", 0, "empty", &tmpl));
    CHECK_OK(moira_jinja_render(tmpl, NULL, &out, &len));
    CHECK(out && len == 0 && out[0] == 0);
    free(out);
    moira_jinja_free(tmpl);

    /* strftime_now formats the local time now. */
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char year[16];
    snprintf(year, sizeof(year), "%d", tm.tm_year + 1900);
    expect_text("{{ strftime_now('%Y') }}", NULL, year);
}

/* The DeepSeek-V3 template as shipped (configs/chat_templates) on a conversation with a system
 * prompt, a tool call, its output and the answer, with and without the generation prompt. */
static void test_deepseek_v3(void) {
    char *src = NULL;
    size_t n = 0;
    moira_status_t status =
        moira_read_file(MOIRA_TEST_DATA_DIR "/../../configs/chat_templates/deepseek-v3.jinja",
                        "chat template", 1 << 20, &src, &n);
    if (status) {
        moira_test_fail(__FILE__, __LINE__, "%s", moira_status_message(status));
        moira_status_free(status);
        return;
    }
    moira_jinja_template_t *tmpl = NULL;
    CHECK_OK(moira_jinja_parse(src, n, "deepseek-v3.jinja", &tmpl));
    free(src);
    if (!tmpl) return;
    json_t *context = json_loads(
        "{\"bos_token\": \"<｜begin▁of▁sentence｜>\", \"eos_token\": \"<｜end▁of▁sentence｜>\","
        " \"messages\": ["
        "{\"role\": \"system\", \"content\": \"Be brief.\"},"
        "{\"role\": \"user\", \"content\": \"Wetter in Zürich?\"},"
        "{\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"type\": \"function\","
        " \"function\": {\"name\": \"weather\", \"arguments\": \"{\\\"city\\\": "
        "\\\"Zürich\\\"}\"}}]},"
        "{\"role\": \"tool\", \"content\": \"21°C\"},"
        "{\"role\": \"assistant\", \"content\": \"21 °C.\"},"
        "{\"role\": \"user\", \"content\": \"Danke\"}]}",
        0, NULL);
    CHECK(context != NULL);
    const char *expected =
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Wetter in Zürich?<｜Assistant｜>"
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>weather\n"
        "```json\n{\"city\": \"Zürich\"}\n```<｜tool▁call▁end｜>"
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>21°C<｜tool▁output▁end｜>"
        "<｜tool▁outputs▁end｜>21 °C.<｜end▁of▁sentence｜><｜User｜>Danke";
    for (int prompt = 0; prompt < 2; prompt++) {
        json_object_set_new(context, "add_generation_prompt", json_boolean(prompt));
        char *out = NULL;
        size_t len = 0;
        CHECK_OK(moira_jinja_render(tmpl, context, &out, &len));
        size_t want = strlen(expected);
        CHECK(out && len == want + (prompt ? strlen("<｜Assistant｜>") : 0));
        CHECK(out && memcmp(out, expected, want) == 0);
        if (out && prompt) CHECK(strcmp(out + want, "<｜Assistant｜>") == 0);
        free(out);
    }
    json_decref(context);
    moira_jinja_free(tmpl);
}

int main(void) {
    test_table();
    test_syntax_errors();
    test_runtime_errors();
    test_limits();
    test_api();
    test_deepseek_v3();
    return moira_test_finish("test_jinja");
}
