#!/usr/bin/env python3
"""Lists import cycles between the modules of a Rust crate: pairs of sibling modules that
`use` each other, strongly connected groups, and cycles between top-level modules.
Usage: python3 scripts/module-cycles.py host/src   (exits 1 when there is a cycle)."""
import os,re,sys,itertools
root=sys.argv[1]  # src dir
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if not f.endswith('.rs'): continue
        p=os.path.join(dp,f); rel=os.path.relpath(p,root)[:-3]
        parts=rel.split('/')
        if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
        mods['::'.join(parts)]=open(p).read()
def strip_tests(s):
    i=s.find('#[cfg(test)]\nmod tests')
    return s if i<0 else s[:i]
edges={}
for m,src in mods.items():
    src=strip_tests(src)
    deps=set()
    for u in re.findall(r'crate::([a-z_]+(?:::[a-z_]+)?)',src):
        deps.add(u)
    # super:: references
    for u in re.findall(r'super::([a-z_]+)',src):
        par=m.rsplit('::',1)[0] if '::' in m else ''
        # if m is a mod.rs-dir module, super refers to its parent.
        deps.add((par+'::' if par else '')+u)
    edges[m]=deps
# module-level graph at depth <=2
def norm(x):
    # map to the longest existing module prefix
    parts=x.split('::')
    for k in range(len(parts),0,-1):
        c='::'.join(parts[:k])
        if c in mods: return c
    return None
G={m:set() for m in mods}
for m,ds in edges.items():
    for d in ds:
        n=norm(d)
        if n and n!=m and not m.startswith(n+'::') and not n.startswith(m+'::'):
            G[m].add(n)
cyc=set()
for a in G:
    for b in G[a]:
        if a in G.get(b,()):
            cyc.add(tuple(sorted((a,b))))
for c in sorted(cyc): print('cycle:',c[0],'<->',c[1])
# longer cycles via SCC
idx={};low={};st=[];on=set();out=[];i=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
    for w in G[v]:
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: out.append(comp)
for v in G:
    if v not in idx: sc(v)
for c in out: print('scc:',sorted(c))
found=bool(cyc or out)
T={}
for a,bs in G.items():
    ta=a.split('::')[0]
    for b in bs:
        tb=b.split('::')[0]
        if ta!=tb: T.setdefault(ta,set()).add(tb)
for a in sorted(T):
    for b in sorted(T[a]):
        if a in T.get(b,()) and a<b: print('top-level cycle:',a,'<->',b)
        if a in T.get(b,()) and a<b: found=True
print('top-level graph:'); [print(' ',a,'->',sorted(T[a])) for a in sorted(T)]
sys.exit(1 if found else 0)
