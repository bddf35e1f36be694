"""Prompts: the rule rewriter on Table-2-style examples and the real CVLUE sample; the LLM rewriter against a local
OpenAI-compatible HTTP server (retries, fallback, cache, concurrency, unreachable endpoint, API key hygiene)."""
import io, json, logging, re, socket, time
from pathlib import Path
import pytest
from cvlue_nb.core import DataError
from cvlue_nb.prompts import (itr_prompt, qa_pairs_for_image, vd_qa_pairs, rewrite_pair, strip_end, polarity, num_to_zh,
                              RuleRewriter, LLMRewriter, ScriptedChatServer, JsonlCache, make_rewriter, RewriteResult)

KEY = 'sk-LEAK-CANARY-7f3a9c1e5d'

# ---------------------------------------------------------------- rules
TABLE2 = [([('图中有几只熊猫？', '2')], '图中有两只熊猫。'),
          ([('三只熊猫大小相同吗', '否')], '三只熊猫大小不相同。'),
          ([('左下方的盘子里装的是肉还是蔬菜', '肉')], '左下方的盘子里装的是肉。'),
          ([('最下面的熊猫躺在哪里？', '草地上')], '最下面的熊猫躺在草地上。'),
          ([('狮子是什么颜色的？', '红色')], '狮子是红色的。'),
          ([('有几只大熊猫？', '2'), ('大熊猫在吃竹子吗？', '是'), ('大熊猫在哪里？', '树上')],
           '有两只大熊猫，大熊猫在吃竹子，大熊猫在树上。')]

@pytest.mark.parametrize('pairs,want', TABLE2)
def test_table2_examples(pairs, want):
    r = RuleRewriter().rewrite(pairs)
    assert (r.text, r.source, r.fell_back, r.n_plain) == (want, 'rules', False, 0)

@pytest.mark.parametrize('q,a,want', [
    ('有几只大熊猫？', '2', '有两只大熊猫'), ('有几个人？', '两个', '有两个人'), ('草地上有多少只羊', '20', '草地上有二十只羊'),
    ('他排在第几个', '3', '他排在第三个'), ('灯是关着的吗？', '否', '灯不是关着的'), ('桌上有苹果吗', '没有', '桌上没有苹果'),
    ('桌上有苹果吗', '有', '桌上有苹果'), ('他们是在室内还是在室外？', '室内', '他们是在室内'),
    ('熊猫在做什么？', '吃竹子', '熊猫在吃竹子'), ('谁在吹唢呐？', '新郎', '新郎在吹唢呐'),
    ('穿婚纱的女人在哪一边？', '右边', '穿婚纱的女人在右边')])
def test_rule_forms(q, a, want):
    assert rewrite_pair(q, a)[0] == want

def test_plain_fallback_is_counted():
    rr = RuleRewriter()
    r = rr.rewrite([('图片描述一下', '一只熊猫'), ('有几只熊猫', '1')])
    assert r.n_plain == 1 and '问：图片描述一下，答：一只熊猫' in r.text and rr.stats['plain'] == 1

def test_itr_prompt_and_bad_input():
    assert itr_prompt(['木床上有一只熊猫。', '一棵树的前面有一只熊猫']) == '木床上有一只熊猫，一棵树的前面有一只熊猫。'
    with pytest.raises(DataError, match='no non-empty caption'): itr_prompt(['  '])

# ---------------------------------------------------------------- rules on the real sample
FORMS = [('几+量词', r'有几[个只头条]', '3'), ('多少', r'多少[个只人]', '12个'), ('第几', r'第几', '2'),
         ('是…吗/是', r'^[^，]*是[^，还]*吗$', '是'), ('是…吗/不是', r'^[^，]*是[^，还]*吗$', '不是'),
         ('有…吗/没有', r'^[^，]*有[^，还]*吗$', '没有'), ('能…吗', r'^[^，]*(能|可以)[^，还]*吗$', '能'),
         ('在…吗/否', r'^[^，]*在[^，还]*吗$', '否'), ('很…吗', r'^[^，]*很[大多高]吗$', '否'), ('A不A', r'^[^，]*(.)不\1', '不'),
         ('有没有', r'有没有', '有'), ('是否', r'是否', '否'), ('还是', r'^[^，]*是[^，]{1,6}还是[^，]{1,6}$', None),
         ('什么颜色', r'什么颜色', '蓝色'), ('是什么', r'是什么$', '一男一女'), ('什么地方', r'在什么地方', '公园里'),
         ('在哪里', r'在哪里', '桌子上'), ('哪个', r'哪个', '左边的'), ('哪一边', r'哪一?[边侧]', '右边'),
         ('谁', r'谁', '一个小男孩'), ('怎么样', r'怎么样', '很好'), ('什么样的', r'什么样的', '红色的'),
         ('做什么', r'在(做|干)什么', '踢足球'), ('为什么', r'为什么', '在举行婚礼'), ('几岁', r'几岁', '5'),
         ('多高', r'有多[高长]', '三米'), ('左右边', r'[左右]边[^，]*有什么', '一棵树'), ('穿什么衣服', r'穿[^样]*什么衣服', '西装')]
_LEFT = re.compile(r'什么|哪|几|多少|谁|怎么|吗|还是|是否|[?？]')

def _sample_rows(root):
    rows = []
    for f in ('example/VQA/example.json', 'test_example/VQA/gold.json'):
        rows += [(r['question'], r['answer']) for r in json.loads((root/f).read_text('utf-8'))]
    vd = json.loads((root/'test_example/VD/test_VD.json').read_text('utf-8'))
    for d in vd['dialogs']: rows += vd_qa_pairs(d, vd['id2question'], vd['id2answer'])[1]
    qs = [vd['id2question'][k] for k in sorted(vd['id2question'], key=int)]
    forms = set()
    for form, pat, ans in FORMS:
        q = next((q for q in qs if re.search(pat, strip_end(q)) and q.count('？') <= 1 and '，' not in q), None)
        if q is None: continue
        opt = re.split(r'[的呢]', re.sub(r'^[在是被]', '', strip_end(q).split('还是', 1)[1]))[0] if ans is None else ans
        rows.append((q, opt)); forms.add(form)
    return rows, forms

def _answer_kept(a, out):
    core = strip_end(a); sign, rest = polarity(core); m = re.match(r'^(\d+)', core)
    if m: return num_to_zh(int(m.group(1))) in out or num_to_zh(int(m.group(1)), False) in out
    if sign < 0: return bool(re.search('不|没|并非|无', out)) and (not rest or rest[:4] in out)
    if sign > 0: return not rest or rest[:4] in out
    return core.rstrip('的') in out

@pytest.mark.sample('the rule rewriter on the real question/answer pairs and captions')
def test_rules_on_real_sample(sample):
    root = sample
    rows, forms = _sample_rows(root)
    assert len(forms) >= 20 and len(rows) >= 40
    outs = [(q, a, *rewrite_pair(q, a)) for q, a in rows]
    for q, a, out, rule in outs:
        assert out and not re.search('[?？]', out), (q, a, out)
        assert not (_LEFT.search(out) and not _LEFT.search(a)), (q, a, out)
        assert _answer_kept(a, out), (q, a, out)
    assert sum(rule == 'plain' for *_, rule in outs) <= 0.05 * len(outs)
    # whole VD dialog → one description starting with the caption
    vd = json.loads((root/'test_example/VD/test_VD.json').read_text('utf-8'))
    cap, pairs = vd_qa_pairs(vd['dialogs'][0], vd['id2question'], vd['id2answer'])
    r = RuleRewriter().rewrite(pairs, cap)
    assert r.text.startswith(strip_end(cap)) and r.text.endswith('。') and '？' not in r.text
    # VQA grouping by image, and ITR prompt from real captions
    grouped = qa_pairs_for_image(json.loads((root/'example/VQA/example.json').read_text('utf-8')))
    assert sum(map(len, grouped.values())) == 6
    caps = json.loads((root/'example/IC/example.json').read_text('utf-8'))[0]['caption']
    p = itr_prompt(caps)
    assert p == '，'.join(caps) + '。'

# ---------------------------------------------------------------- LLM rewriter against a real local HTTP server
@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv('CVLUE_TEST_KEY', KEY)
    return 'CVLUE_TEST_KEY'

def _llm(srv_or_url, key_env, tmp_path=None, **kw):
    url = srv_or_url if isinstance(srv_or_url, str) else srv_or_url.base_url
    kw = dict(dict(backoff=0.01, max_backoff=0.05, timeout=0.4, max_retries=3), **kw)
    return LLMRewriter(url, 'test-model', key_env, cache_path=tmp_path/'cache.jsonl' if tmp_path else None, **kw)

PAIRS = [[('有几只大熊猫？', '2')], [('灯是关着的吗？', '否')], [('熊猫在哪里？', '树上')], [('有几个人？', '3')],
         [('狮子是什么颜色的？', '红色')], [('他们是在室内还是在室外？', '室内')]]

@pytest.mark.parametrize('failure', [429, 500, 503, 'timeout', 'malformed', 'empty'])
def test_retry_then_success(failure, key_env):
    with ScriptedChatServer([failure, 'ok'], sleep=1.0) as srv:
        llm = _llm(srv, key_env)
        r = llm.rewrite(PAIRS[0])
        assert (r.source, r.fell_back, r.text, len(srv.requests)) == ('llm', False, '有两只大熊猫。', 2)
        assert llm.stats['errors'] == 1 and llm.stats['llm'] == 1

def test_retries_exhausted_then_fallback(key_env):
    with ScriptedChatServer([429, 500, 'timeout', 'malformed'], default=500, sleep=1.0) as srv:
        llm = _llm(srv, key_env, max_retries=3)
        r = llm.rewrite(PAIRS[1])
        assert len(srv.requests) == 4                      # 1 try + 3 retries, then no more
        assert (r.source, r.fell_back, r.text) == ('rules', True, '灯不是关着的。')
        assert 'InternalServerError' in r.error or 'Error' in r.error
        assert dict(llm.stats) == {'errors': 4, 'fell_back': 1}

def test_client_errors_are_not_retried(key_env):
    with ScriptedChatServer(default=400) as srv:
        llm = _llm(srv, key_env)
        r = llm.rewrite(PAIRS[0])
        assert len(srv.requests) == 1 and r.fell_back and r.text == '有两只大熊猫。'

def test_backoff_grows(key_env):
    with ScriptedChatServer(default=500) as srv:
        t = time.perf_counter()
        _llm(srv, key_env, backoff=0.05, max_backoff=1.0, max_retries=3).rewrite(PAIRS[0])
        assert time.perf_counter() - t >= 0.05 + 0.1 + 0.2   # 0.05·2^k for k = 0, 1, 2

def test_cache_makes_rerun_free(key_env, tmp_path):
    with ScriptedChatServer() as srv:
        first = _llm(srv, key_env, tmp_path, concurrency=3).rewrite_many(PAIRS)
        n = len(srv.requests)
        assert n == len(PAIRS) and all(r.source == 'llm' for r in first)
        again = _llm(srv, key_env, tmp_path).rewrite_many(PAIRS)
        assert len(srv.requests) == n                      # zero new requests
        assert [r.source for r in again] == ['cache'] * len(PAIRS) and [r.text for r in again] == [r.text for r in first]
        other = LLMRewriter(srv.base_url, 'other-model', key_env, cache_path=tmp_path/'cache.jsonl', timeout=1)
        other.rewrite(PAIRS[0]); assert len(srv.requests) == n + 1   # the key includes the model

def test_cache_tolerates_truncated_last_line(key_env, tmp_path):
    with ScriptedChatServer() as srv:
        _llm(srv, key_env, tmp_path).rewrite_many(PAIRS[:2])
        with open(tmp_path/'cache.jsonl', 'a', encoding='utf-8') as f: f.write('{"key": "abc", "text": "半')  # killed writer
        llm = _llm(srv, key_env, tmp_path)
        assert llm.cache.n_bad == 1 and len(llm.cache.data) == 2
        llm.rewrite_many(PAIRS)
        lines = (tmp_path/'cache.jsonl').read_text('utf-8').splitlines()
        assert sum(1 for l in lines if l.startswith('{"key": "abc"')) == 1
        assert len(JsonlCache(tmp_path/'cache.jsonl').data) == len(PAIRS)

def test_concurrency_is_bounded(key_env):
    with ScriptedChatServer(delay=0.1) as srv:
        res = _llm(srv, key_env, concurrency=2, timeout=2).rewrite_many(PAIRS + PAIRS[:2])
        assert srv.max_in_flight == 2 and len(res) == 8 and all(r.source == 'llm' for r in res)

def _closed_port_url():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}/v1'

def test_unreachable_endpoint_falls_back(key_env, caplog):
    caplog.set_level(logging.WARNING, logger='cvlue_nb.prompts')
    llm = _llm(_closed_port_url(), key_env, max_retries=2, concurrency=1)
    t = time.perf_counter()
    res = llm.rewrite_many(PAIRS)
    assert time.perf_counter() - t < 10
    assert all(r.fell_back and r.source == 'rules' for r in res) and res[0].text == '有两只大熊猫。'
    assert llm.down and 'unreachable' in llm.down
    assert sum('unreachable' in m for m in caplog.messages) == 1     # said once, clearly
    assert llm.stats['fell_back'] == len(PAIRS) and llm.stats['errors'] == 3   # only the first item tried

def test_api_key_never_leaks(key_env, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)                         # root: openai, httpx, httpcore and our own logs
    for name in ('openai', 'httpx', 'httpcore', 'cvlue_nb.prompts'): logging.getLogger(name).setLevel(logging.DEBUG)
    def echo_401(body, auth):                               # a server that echoes the credentials in its error
        return 401, {'error': {'message': f'Incorrect API key provided: {auth}', 'type': 'invalid_request_error'}}
    try:
        results = []
        with ScriptedChatServer(['ok', 500, 500, 500, 500, echo_401, 'malformed', 'ok']) as srv:
            llm = _llm(srv, key_env, tmp_path, concurrency=1, max_retries=3)
            results += llm.rewrite_many(PAIRS[:4])
            print(llm, dict(llm.stats), results)
            assert all(a == f'Bearer {KEY}' for a in srv.authorizations)   # the key was used…
        assert results[2].fell_back and results[2].error and 'Incorrect API key' in results[2].error
        down = _llm(_closed_port_url(), key_env, tmp_path, max_retries=1)
        results += down.rewrite_many(PAIRS[4:])
        print(down.down, results)
    finally:
        for name in ('openai', 'httpx', 'httpcore', 'cvlue_nb.prompts'): logging.getLogger(name).setLevel(logging.NOTSET)
    out, err = capfd.readouterr()
    logs = '\n'.join(r.getMessage() for r in caplog.records)
    assert logs and 'Incorrect API key' in logs                  # the error was logged…
    for where, text in [('stdout', out), ('stderr', err), ('logs', logs), ('caplog.text', caplog.text),
                        ('cache', (tmp_path/'cache.jsonl').read_text('utf-8')), ('results', repr(results)),
                        ('stats', repr(llm.stats) + repr(down.stats))]:
        assert KEY not in text and KEY[:12] not in text, f'API key leaked into {where}'   # …but never the key

def test_missing_key_env_still_works(monkeypatch, caplog):
    monkeypatch.delenv('CVLUE_NO_SUCH_KEY', raising=False)
    caplog.set_level(logging.WARNING, logger='cvlue_nb.prompts')
    with ScriptedChatServer() as srv:
        r = LLMRewriter(srv.base_url, 'm', 'CVLUE_NO_SUCH_KEY', timeout=1).rewrite(PAIRS[0])
    assert r.source == 'llm' and any('CVLUE_NO_SUCH_KEY is not set' in m for m in caplog.messages)

def test_make_rewriter(monkeypatch, key_env):
    monkeypatch.delenv('CVLUE_LLM_BASE_URL', raising=False); monkeypatch.delenv('CVLUE_LLM_MODEL', raising=False)
    assert isinstance(make_rewriter(), RuleRewriter)
    with ScriptedChatServer() as srv:
        monkeypatch.setenv('CVLUE_LLM_BASE_URL', srv.base_url); monkeypatch.setenv('CVLUE_LLM_MODEL', 'env-model')
        rw = make_rewriter(api_key_env=key_env, timeout=1)
        assert isinstance(rw, LLMRewriter) and rw.name == 'llm:env-model'
        assert rw.rewrite(PAIRS[3]).text == '有三个人。' and srv.requests[0]['model'] == 'env-model'
        assert srv.requests[0]['temperature'] == 0
        assert srv.requests[0]['messages'][0]['content'].startswith('请你把下面的问答转化为陈述句:')

# ---------------------------------------------------------------- issue 13: transient vs fatal at the start of a job
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading
from cvlue_nb.prompts import LLMFatalError, ProbeResult, probe_llm, start_rewriter, error_kind

@contextmanager
def scripted_server(responses, n_max=20, hang_s=1.5):
    """An OpenAI-compatible server written here, independent of `ScriptedChatServer`: one thread that accepts at
    most `n_max` requests (each answered on its own thread, so a hang blocks nobody else) and then stops by itself. `responses[k]` answers request k: an HTTP status,
    'hang' (sleep past the client timeout, then answer), 'malformed' (200 with broken JSON); afterwards a valid
    completion that echoes the rule rewrite of the prompt's QA pair (`_default_reply`)."""
    from cvlue_nb.prompts import _default_reply
    seen, lock = [], threading.Lock()
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get('Content-Length', 0))))
            with lock: k = len(seen); seen.append((self.path, body, self.headers.get('Authorization')))
            act = responses[k] if k < len(responses) else 'ok'
            if act == 'hang': time.sleep(hang_s)
            if isinstance(act, int): code, out = act, {'error': {'message': f'status {act} for {self.headers.get("Authorization")}'}}
            elif act == 'malformed': code, out = 200, b'{"choices": [{"message": {"content": '
            else: code, out = 200, {'id': 'c', 'object': 'chat.completion', 'created': 0, 'model': body['model'], 'choices': [
                      {'index': 0, 'message': {'role': 'assistant', 'content': _default_reply(body['messages'][-1]['content'])}, 'finish_reason': 'stop'}]}
            data = out if isinstance(out, bytes) else json.dumps(out, ensure_ascii=False).encode()
            try:
                self.send_response(code); self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(data)))
                self.end_headers(); self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError): pass   # the client gave up on a hang
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), H); httpd.timeout, httpd.daemon_threads = 0.2, True
    def serve():
        t_end = time.monotonic() + 60                              # and never longer than a minute
        while len(seen) < n_max and time.monotonic() < t_end: httpd.handle_request()
    th = threading.Thread(target=serve, daemon=True); th.start()
    try: yield f'http://127.0.0.1:{httpd.server_address[1]}/v1', seen
    finally:
        n_max = 0; th.join(5); httpd.server_close()

FLAKY = [429, 500, 'hang', 'malformed']

def test_transient_failures_at_start_are_retried_and_llm_answers_win(key_env):
    with scripted_server(FLAKY) as (url, seen):
        llm = _llm(url, key_env, max_retries=4, timeout=0.5, concurrency=1)
        t = time.perf_counter()
        assert start_rewriter(llm, required=True) == ProbeResult(True, False, None)   # waited out the four failures
        assert len(seen) == 5 and time.perf_counter() - t < 10
        res = llm.rewrite_many(PAIRS)
        assert [r.source for r in res] == ['llm'] * len(PAIRS) and not any(r.fell_back for r in res)
        assert res[0].text == '有两只大熊猫。' and llm.stats['llm'] == len(PAIRS) and llm.stats['errors'] == 4
        assert all(p == '/v1/chat/completions' and a == f'Bearer {KEY}' for p, _, a in seen)

def test_transient_failures_outlasting_the_probe_are_not_fatal(key_env):
    "With 3 retries the probe sees only the four failures: not ok, not fatal; the job goes on and gets LLM answers"
    with scripted_server(FLAKY) as (url, seen):
        llm = _llm(url, key_env, max_retries=3, timeout=0.5, concurrency=2)
        r = start_rewriter(llm, required=True)
        assert (r.ok, r.fatal) == (False, False) and 'Error' in r.error and len(seen) == 4 and not llm.down
        res = llm.rewrite_many(PAIRS)
        assert [r.source for r in res] == ['llm'] * len(PAIRS)

def test_no_probe_needed_items_retry_through_the_same_failures(key_env):
    with scripted_server(FLAKY) as (url, seen):
        res = _llm(url, key_env, max_retries=4, timeout=0.5, concurrency=3).rewrite_many(PAIRS)
        assert [r.source for r in res] == ['llm'] * len(PAIRS) and len(seen) == len(PAIRS) + 4

@pytest.mark.parametrize('status', [401, 403, 404])
def test_client_errors_are_fatal_at_start_and_found_fast(status, key_env):
    with scripted_server([status] * 5) as (url, seen):
        t = time.perf_counter()
        r = probe_llm(_llm(url, key_env, backoff=5.0, max_retries=5))     # one retry would take 5 s
        assert (r.ok, r.fatal, len(seen)) == (False, True, 1) and time.perf_counter() - t < 4.0
        assert KEY not in r.error and str(status) in r.error             # the server echoed the key: scrubbed
        with pytest.raises(LLMFatalError, match='cannot be used') as e: start_rewriter(_llm(url, key_env), required=True)
        assert KEY not in str(e.value) and len(seen) == 2

def test_refused_connection_is_fatal_at_start(key_env):
    t = time.perf_counter()
    r = probe_llm(_llm(_closed_port_url(), key_env, backoff=5.0, max_retries=5))   # one retry would take 5 s
    assert (r.ok, r.fatal) == (False, True) and time.perf_counter() - t < 4.0
    with pytest.raises(LLMFatalError): start_rewriter(_llm(_closed_port_url(), key_env), required=True)

def test_auto_never_stops_and_counts_the_fallback(key_env, caplog):
    caplog.set_level(logging.ERROR, logger='cvlue_nb.prompts')
    with scripted_server([401] * 10) as (url, seen):
        llm = _llm(url, key_env)
        assert start_rewriter(llm).fatal and len(seen) == 1
        res = llm.rewrite_many(PAIRS)
        assert [r.source for r in res] == ['rules'] * len(PAIRS) and llm.stats['fell_back'] == len(PAIRS)
        assert len(seen) == 1                                             # no more requests after the fatal probe
    assert sum('using the rule-based rewriter for every item' in m for m in caplog.messages) == 1

def test_busy_server_is_transient_forever(key_env):
    with ScriptedChatServer(default=429, max_requests=10) as srv:
        r = start_rewriter(_llm(srv, key_env, max_retries=2), required=True)   # does not raise
        assert (r.ok, r.fatal, len(srv.requests)) == (False, False, 3)

def test_scripted_server_stops_by_itself(key_env):
    with ScriptedChatServer(max_requests=2) as srv:
        llm = _llm(srv, key_env, max_retries=0, timeout=1)
        assert [r.source for r in llm.rewrite_many(PAIRS[:2])] == ['llm', 'llm']
        assert llm.rewrite(PAIRS[2]).fell_back and srv.stopped           # the third request got 503, then it stopped
        for _ in range(100):                                             # the stop runs on its own thread
            if srv.httpd.socket.fileno() == -1: break
            time.sleep(0.05)
        assert probe_llm(_llm(srv, key_env, max_retries=0)).fatal         # nothing listens any more

def test_error_kinds():
    import httpx, openai
    req = httpx.Request('POST', 'http://x/v1/chat/completions')
    def status(code): return openai.APIStatusError('x', response=httpx.Response(code, request=req), body=None)
    assert [error_kind(status(c)) for c in (400, 401, 403, 404, 405, 422, 408, 409, 429, 500, 502, 503)] == \
           ['fatal'] * 6 + ['retry'] * 6
    assert error_kind(openai.APITimeoutError(request=req)) == 'retry' and error_kind(ValueError('bad json')) == 'retry'
    try:
        try: raise ConnectionRefusedError(111, 'refused')
        except ConnectionRefusedError as c: raise openai.APIConnectionError(request=req) from c
    except openai.APIConnectionError as e: assert error_kind(e) == 'down'
    assert error_kind(openai.APIConnectionError(request=req)) == 'retry'     # dropped mid-reply: transient
