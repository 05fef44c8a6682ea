"""The web page served at ``GET /``: one self-contained HTML document (no external resources).

Choose or type a user to see their top-k with scores and the items they interacted with; click an
item for its similar items; add an item from pasted feature vectors or a row of an uploaded ``.npy``
file (parsed in the browser: little-endian float16/32/64 or int8..int64, C order, 1-D or 2-D).
Every error the service answers is shown in the red box.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>latticerec</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px}header b{font-size:18px}
#meta{opacity:.8;margin-left:12px}
main{display:grid;grid-template-columns:1fr 1fr;gap:16px;padding:16px 20px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 14px}
h2{font-size:15px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
td,th{padding:3px 6px;border-bottom:1px solid #eef0f3;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}
a.item{color:#1a5fd0;cursor:pointer;text-decoration:none}a.item:hover{text-decoration:underline}
#error{display:none;grid-column:1/3;background:#fdecea;border:1px solid #f5c2c0;color:#8a1c14;
padding:8px 12px;border-radius:6px}
input,button,textarea{font:inherit}input[type=text]{width:14em}input[type=number]{width:5em}
textarea{width:100%;height:3.2em}.mod{margin:6px 0}.muted{color:#6b7383}
.chips span{display:inline-block;margin:2px;padding:1px 7px;background:#eef2f8;border-radius:10px}
</style></head><body>
<header><b>latticerec</b><span id="meta">loading...</span></header>
<main>
<div id="error" role="alert"></div>
<section><h2>User</h2>
<form id="user-form"><input id="user" type="text" list="user-list" placeholder="user id" autocomplete="off">
<datalist id="user-list"></datalist> k <input id="k" type="number" value="20" min="1">
<label><input id="exclude" type="checkbox" checked> hide seen</label>
<button id="show" type="submit">Recommend</button></form>
<h2 style="margin-top:12px">Top items <span id="recs-for" class="muted"></span></h2>
<table id="recs"><thead><tr><th>#</th><th>item</th><th>score</th></tr></thead><tbody></tbody></table>
<h2 style="margin-top:12px">Interacted with</h2><div id="seen" class="chips muted">-</div>
</section>
<section><h2>Similar items <span id="similar-for" class="muted"></span></h2>
<table id="similar"><thead><tr><th>#</th><th>item</th><th>cosine</th></tr></thead><tbody></tbody></table>
<h2 style="margin-top:16px">Add an item</h2>
<form id="add-form"><input id="new-item" type="text" placeholder="new item id">
<div id="modalities" class="muted">this model places no new items</div>
<button id="add" type="submit">Add item</button></form>
<div id="add-result" class="chips muted"></div>
</section>
</main>
<script>
const $ = (id) => document.getElementById(id);
let health = null;
function showError(msg){ const e=$("error"); e.textContent=msg; e.style.display=msg?"block":"none"; }
async function api(path, opts){
  const r = await fetch(path, opts); let body = null;
  try { body = await r.json(); } catch(e) { body = {error: "HTTP " + r.status}; }
  if(!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}
function label(it){ return it.title ? it.item + " - " + it.title : it.item; }
function itemLink(it){ const a=document.createElement("a"); a.className="item"; a.textContent=label(it);
  a.dataset.item=it.item; a.onclick=()=>similar(it.item); return a; }
function fill(table, items, key){
  const tb = table.querySelector("tbody"); tb.innerHTML = "";
  items.forEach((it, n) => { const tr=document.createElement("tr");
    const a=document.createElement("td"); a.textContent=n+1; const b=document.createElement("td");
      b.appendChild(itemLink(it));
    const c=document.createElement("td"); c.className="num"; c.textContent=it[key].toFixed(4);
    tr.append(a,b,c); tb.appendChild(tr); });
}
async function recommend(ev){
  if(ev) ev.preventDefault(); showError("");
  const u = $("user").value.trim(); if(!u){ showError("type or choose a user id"); return; }
  const q = "k=" + encodeURIComponent($("k").value) + "&exclude_seen=" + $("exclude").checked;
  try {
    const r = await api("/users/" + encodeURIComponent(u) + "/recommendations?" + q);
    $("recs-for").textContent = "for user " + u; fill($("recs"), r.items, "score");
    const s = await api("/users/" + encodeURIComponent(u) + "/items");
    const box=$("seen"); box.innerHTML=""; if(!s.items.length) box.textContent="(no training items)";
    s.items.forEach(it => { const sp=document.createElement("span"); sp.appendChild(itemLink(it));
      box.appendChild(sp); });
  } catch(e) { showError(e.message); $("recs").querySelector("tbody").innerHTML="";
    $("recs-for").textContent=""; }
}
async function similar(item){
  showError("");
  const k = Math.min(10, health.max_k);
  try { const r = await api("/items/" + encodeURIComponent(item) + "/similar?k=" + k);
    $("similar-for").textContent = "to " + item; fill($("similar"), r.items, "score");
  } catch(e) { showError(e.message); }
}
function half(h){ const s=(h&0x8000)?-1:1, e=(h>>10)&0x1f, f=h&0x3ff;
  if(e===0) return s*Math.pow(2,-14)*(f/1024); if(e===31) return f?NaN:s*Infinity;
  return s*Math.pow(2,e-15)*(1+f/1024); }
function parseNpy(buf, row){
  const u8 = new Uint8Array(buf), dv = new DataView(buf);
  if(u8[0]!==0x93 || String.fromCharCode(...u8.slice(1,6))!=="NUMPY") throw new Error("not a .npy file");
  const major=u8[6], hl = major===1 ? dv.getUint16(8,true) : dv.getUint32(8,true), off = major===1 ? 10 : 12;
  const header = new TextDecoder().decode(u8.slice(off, off+hl));
  const descr = (header.match(/'descr':\s*'([^']+)'/)||[])[1];
  if(/'fortran_order':\s*True/.test(header)) throw new Error(".npy: Fortran order is not supported");
  const shapeText = (header.match(/'shape':\s*\(([^)]*)\)/)||[])[1]||"";
  const shape = shapeText.split(",").map(s=>s.trim()).filter(s=>s).map(Number);
  const kinds = {"<f2":[2,(o)=>half(dv.getUint16(o,true))],"<f4":[4,(o)=>dv.getFloat32(o,true)],
    "<f8":[8,(o)=>dv.getFloat64(o,true)],"<i4":[4,(o)=>dv.getInt32(o,true)],
      "<i8":[8,(o)=>Number(dv.getBigInt64(o,true))],
    "|i1":[1,(o)=>dv.getInt8(o)],"<i2":[2,(o)=>dv.getInt16(o,true)],"|u1":[1,(o)=>dv.getUint8(o)]};
  if(!kinds[descr]) throw new Error(".npy: dtype " + descr + " is not supported (use float32)");
  if(shape.length<1 || shape.length>2)
    throw new Error(".npy: expected a 1-D or 2-D array, got shape (" + shape + ")");
  const [size, get] = kinds[descr], d = shape[shape.length-1], rows = shape.length===2 ? shape[0] : 1;
  if(!(row>=0 && row<rows)) throw new Error(".npy: row " + row + " is outside 0.." + (rows-1));
  const out = [], start = off + hl + row*d*size;
  if(start + d*size > buf.byteLength) throw new Error(".npy: the file is truncated");
  for(let j=0;j<d;j++) out.push(get(start + j*size));
  return out;
}
async function features(){
  const out = {};
  for(const m of Object.keys(health.modalities||{})){
    const file = $("file-"+m).files[0];
    if(file){ out[m] = parseNpy(await file.arrayBuffer(), Number($("row-"+m).value||0)); continue; }
    const text = $("feat-"+m).value.trim();
    if(!text) continue;  // missing: the service names the modality
    out[m] = text.replace(/[\[\]]/g," ").split(/[\s,;]+/).filter(s=>s).map(s => {
      const low = s.toLowerCase(); return low==="nan" ? "NaN" : Number(s); });
  }
  return out;
}
function jsonWithNaN(obj){
  const keep = (k, v) => (typeof v==="number" && !isFinite(v)) ? String(v) : v;
  return JSON.stringify(obj, keep).replace(/"(NaN|Infinity|-Infinity)"/g, "$1"); }
async function addItem(ev){
  ev.preventDefault(); showError(""); $("add-result").textContent="";
  try {
    const body = {item: $("new-item").value.trim(), features: await features()};
    const r = await api("/items", {method:"POST", headers:{"Content-Type":"application/json"},
      body: jsonWithNaN(body)});
    const res=$("add-result"); res.textContent = "added " + r.item + " (" + r.items + " items); neighbours: ";
    r.neighbours.forEach(n => {
      const sp=document.createElement("span"); sp.appendChild(itemLink(n)); res.appendChild(sp); });
    loadHealth();
  } catch(e) { showError(e.message); }
}
function buildModalities(){
  const box=$("modalities"); const mods = health.modalities;
  if(!mods){ box.textContent = "this model (" + health.model +
    ") has no content: it places no new items"; $("add").disabled=true; return; }
  box.innerHTML = "";
  for(const [m, d] of Object.entries(mods)){
    const div=document.createElement("div"); div.className="mod";
    div.innerHTML = "<b></b> (" + d + " numbers) <input type='file' accept='.npy'> row " +
      "<input type='number' value='0' min='0'>" +
      "<textarea placeholder='paste numbers, comma or space separated'></textarea>";
    div.querySelector("b").textContent = m;
    const [f, r] = div.querySelectorAll("input"); f.id="file-"+m; r.id="row-"+m;
      div.querySelector("textarea").id="feat-"+m;
    box.appendChild(div);
  }
}
async function loadHealth(){
  health = await api("/health");
  $("k").max = health.max_k; $("k").value = Math.min(Number($("k").value), health.max_k);
  const rec = health.index["recall@20"];
  const idx = health.index.kind + (rec !== undefined ? " (recall@20 " + rec + ")" : "");
  $("meta").textContent = health.model + " - " + health.users + " users, " + health.items +
    " items, index " + idx;
}
async function loadUsers(prefix){
  const r = await api("/users?limit=100" + (prefix ? "&prefix=" + encodeURIComponent(prefix) : ""));
  const dl=$("user-list"); dl.innerHTML=""; r.users.forEach(u => {
    const o=document.createElement("option"); o.value=u; dl.appendChild(o); });
}
$("user-form").addEventListener("submit", recommend);
$("add-form").addEventListener("submit", addItem);
$("user").addEventListener("input", () => loadUsers($("user").value.trim()).catch(e => showError(e.message)));
(async () => { try { await loadHealth(); buildModalities(); await loadUsers("");
  document.body.dataset.ready = "1"; }
  catch(e) { showError(e.message); } })();
</script></body></html>
"""
