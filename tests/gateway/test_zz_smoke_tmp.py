import time, openai, httpx
def test_smoke(dukat):
    c = openai.OpenAI(base_url=dukat.base_url, api_key="x", max_retries=0)
    t=time.time()
    r = c.chat.completions.create(model="tiny/tinyllama", messages=[{"role":"user","content":"hi"}], max_tokens=8, temperature=0)
    print(time.time()-t, r)
    t=time.time()
    r = c.chat.completions.create(model="tiny/tinyllama", messages=[{"role":"user","content":"hi"}], max_tokens=8, temperature=0)
    print(time.time()-t, r)
    raw = httpx.post(dukat.base_url+"/chat/completions", json={"messages":[{"role":"user","content":"hi"}],"stream":True,"max_tokens":5}, timeout=60)
    print(raw.status_code, raw.headers, raw.text)
