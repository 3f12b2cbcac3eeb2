"""The HTML view's inline style and script (one copy per page or notebook fragment; nothing is fetched)."""

CSS = """
.gs{--prompt:#cfe6fb;--completion:#ffe3b3;--pad:#e6e6e6;--unknown:#ffffff;--trained:#0b2f6b;--flag:#c03a00;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#161616;background:#fff;max-width:1200px;margin:0 auto;padding:12px}
.gs h1{font-size:20px;margin:4px 0}.gs h2{font-size:16px;margin:18px 0 6px}
.gs .verdict{font-size:16px;padding:6px 10px;border-left:6px solid;margin:6px 0}
.gs .verdict.ok{border-color:#009E73;background:#eaf7f1}.gs .verdict.fail{border-color:var(--flag);background:#fdeee6}
.gs .verdict.warn{border-color:#b08a00;background:#fff7d6}
.gs dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0;color:#333}
.gs dl.summary dt{font-weight:600}.gs dl.summary dd{margin:0}
.gs table{border-collapse:collapse;width:100%;margin:4px 0}.gs th,.gs td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
.gs th{background:#f3f3f3}.gs td.error{color:#a32f00;font-weight:700}.gs td.warning{color:#7a5c00;font-weight:700}
.gs td.pass{color:#006b4f}
.gs .legend ul{list-style:none;padding:0;margin:0;display:flex;flex-wrap:wrap;gap:6px 18px}
.gs .controls{border:1px solid #ccc;margin:10px 0;display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center}
.gs .controls .hint{color:#555}
.gs .strip{font:13px/2 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all;
padding:6px;border:1px solid #ddd;background:#fafafa;outline-offset:2px}
.gs span[data-role]{background-color:var(--unknown);border-radius:2px;margin:0 1px 0 0;padding:1px 1px;
box-shadow:inset 0 0 0 1px rgba(0,0,0,.18)}
.gs span[data-role=prompt]{background-color:var(--prompt)}
.gs span[data-role=completion]{background-color:var(--completion)}
.gs span[data-role=pad]{background-color:var(--pad);color:#666}
.gs span[data-role=unknown]{box-shadow:inset 0 0 0 1px #888}
.gs span[data-trained]{font-weight:700;text-decoration:underline solid 2px var(--trained);text-underline-offset:3px}
.gs span[data-special]{font-size:11px;font-style:italic;letter-spacing:-.02em}
.gs span[data-flag]{outline:2px solid var(--flag);outline-offset:-1px;
background-image:repeating-linear-gradient(135deg,rgba(192,58,0,.42) 0 2px,transparent 2px 6px)}
.gs span[data-flag]::after{content:"!";color:var(--flag);font-weight:900;font-size:10px;vertical-align:super}
.gs span.cur{outline:3px solid #000;outline-offset:1px}
.gs details.sample{margin:6px 0;border:1px solid #ccc;border-radius:4px;padding:2px 8px}
.gs details.sample>summary{cursor:pointer;padding:3px 0;font-weight:600}
.gs details.sample b.fail,.gs b.fail{color:var(--flag)}
.gs .heat{margin:6px 0}.gs .heat figcaption{color:#444;font-size:12px}
.gs .heat-grid{display:flex;align-items:flex-start}
.gs .heat-rows{list-style:none;margin:0;padding:0 4px 0 0;font:10px/var(--row,8px) ui-monospace,monospace;text-align:right}
.gs .heat-rows li{height:var(--row,8px)}
.gs .heat-canvas{position:relative;flex:1}
.gs .heat-canvas canvas{width:100%;image-rendering:pixelated;display:block;cursor:crosshair;border:1px solid #bbb}
.gs .heat-canvas .cursor{position:absolute;top:0;bottom:0;width:2px;background:#000;pointer-events:none}
.gs .ramp{display:inline-block;width:120px;height:10px;vertical-align:middle;
background:linear-gradient(90deg,#440154,#3b528b,#21918c,#5ec962,#fde725)}
.gs .zero-key{display:inline-block;width:14px;height:10px;background:#d9d9d9;vertical-align:middle}
.gs .tip{position:fixed;z-index:10;background:#111;color:#fff;font:12px/1.35 ui-monospace,monospace;padding:6px 8px;
border-radius:4px;max-width:420px;pointer-events:none;white-space:pre-wrap}
.gs .hist .bar{display:inline-block;height:10px;background:#0072B2}
.gs svg text{font-size:11px;fill:#333}.gs svg .ax{stroke:#555}
@media (prefers-reduced-motion:no-preference){.gs details.sample>summary{transition:none}}
"""

JS = r"""
(function(){
const VIRIDIS=[[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
const ROLE_RGB={prompt:[207,230,251],completion:[255,227,179],pad:[230,230,230],unknown:[255,255,255]};
function ramp(f){f=Math.max(0,Math.min(1,f));const i=Math.min(3,Math.floor(f*4)),t=f*4-i,a=VIRIDIS[i],b=VIRIDIS[i+1];
  return [0,1,2].map(k=>Math.round(a[k]+(b[k]-a[k])*t));}
function css(c){return "rgb("+c[0]+","+c[1]+","+c[2]+")";}
function fmt(v){if(v===null||v===undefined)return "–";if(Number.isNaN(v))return "nan";if(!isFinite(v))return v>0?"inf":"-inf";
  return Math.abs(v)>=0.01||v===0?(+v.toPrecision(4)).toString():v.toExponential(2);}
function column(s,Type){const b=atob(s),u=new Uint8Array(b.length);for(let i=0;i<b.length;i++)u[i]=b.charCodeAt(i);
  return Array.from(new Type(u.buffer));}
function bf16(s){const b=atob(s),n=b.length>>1,u=new Uint32Array(n);
  for(let i=0;i<n;i++)u[i]=(b.charCodeAt(2*i)|b.charCodeAt(2*i+1)<<8)<<16;return new Float32Array(u.buffer);}
function heatmap(g,h){const T=g.text.length,norms=bf16(h.bf16),rows=h.layers+1;
  const at=(r,x)=>r===0?g.gemb[x]:norms[(r-1)*T+x];let lo=Infinity,hi=0;
  for(let r=0;r<rows;r++)for(let x=0;x<T;x++){const v=at(r,x);if(v>0&&v<Infinity){if(v<lo)lo=v;if(v>hi)hi=v;}}
  if(lo>hi)lo=hi=1;const a=Math.log(lo),w=Math.log(hi)-a;
  return {rows,at,lo,hi,frac:v=>w>0?(Math.log(v)-a)/w:1};}
function data(d){if(d._gs)return d._gs;const g=JSON.parse(d.querySelector("script.gs-sample").textContent),out={text:g.text};
  for(const k in g.f32)out[k]=column(g.f32[k],Float32Array);for(const k in g.i32)out[k]=column(g.i32[k],Int32Array);
  for(const k in g.none)g.none[k].forEach(i=>{out[k][i]=null;});if(g.heat)out.heat=heatmap(out,g.heat);return d._gs=out;}
function paint(h,px,o,v){const bad=v===null||Number.isNaN(v)||v===Infinity;  // NaN/Inf black, zero grey
  if(bad||v<=0){px[o]=px[o+1]=px[o+2]=bad?0:217;}
  else{const f=Math.max(0,Math.min(1,h.frac(v)))*4,i=f<3?Math.floor(f):3,t=f-i,a=VIRIDIS[i],b=VIRIDIS[i+1];
    px[o]=Math.round(a[0]+(b[0]-a[0])*t);px[o+1]=Math.round(a[1]+(b[1]-a[1])*t);px[o+2]=Math.round(a[2]+(b[2]-a[2])*t);}
  px[o+3]=255;}
function init(root){
  if(root.dataset.ready)return;root.dataset.ready="1";
  const tip=root.querySelector(".tip"),controls=root.querySelector(".controls");
  const ranges=controls?JSON.parse(controls.dataset.ranges):{};
  function frac(mode,v){const r=ranges[mode];if(v===null||!isFinite(v)||!r||r[0]===null)return null;
    if(mode==="loss")return r[1]>r[0]?(v-r[0])/(r[1]-r[0]):1;
    if(v<=0)return null;return r[1]>r[0]?(Math.log(v)-Math.log(r[0]))/(Math.log(r[1])-Math.log(r[0])):1;}
  function shade(d){const mode=root.dataset.shade,spans=d.querySelectorAll(".strip>span");
    if(d._shade===mode)return;d._shade=mode;
    if(mode==="role"){spans.forEach(s=>{s.style.backgroundColor="";s.style.color="";});return;}
    const vals=data(d)[mode];
    spans.forEach((s,i)=>{const f=frac(mode,vals[i]);if(f===null){s.style.backgroundColor="#d9d9d9";s.style.color="";return;}
      const c=ramp(f);s.style.backgroundColor=css(c);s.style.color=f<0.6?"#fff":"#000";});}
  function heat(d){const c=d.querySelector("canvas");if(!c||c._drawn)return;c._drawn=1;
    const g=data(d),h=g.heat,spans=d.querySelectorAll(".strip>span"),T=spans.length,rows=h.rows+2;
    const rowPx=Math.max(3,Math.min(10,Math.floor(220/rows)));d.querySelector(".heat-grid").style.setProperty("--row",rowPx+"px");
    c.width=T;c.height=rows;c.style.height=(rows*rowPx)+"px";
    const ctx=c.getContext("2d"),img=ctx.createImageData(T,rows),px=img.data;
    function put(x,y,rgb){const o=(y*T+x)*4;px[o]=rgb[0];px[o+1]=rgb[1];px[o+2]=rgb[2];px[o+3]=255;}
    spans.forEach((s,x)=>{const base=ROLE_RGB[s.dataset.role]||ROLE_RGB.unknown;
      put(x,0,s.hasAttribute("data-trained")?[11,47,107]:base);put(x,1,s.hasAttribute("data-flag")?[192,58,0]:[255,255,255]);});
    for(let r=0;r<h.rows;r++)for(let x=0;x<T;x++)paint(h,px,((r+2)*T+x)*4,h.at(r,x));
    ctx.putImageData(img,0,0);
    c.addEventListener("mousemove",e=>{const b=c.getBoundingClientRect(),x=Math.floor((e.clientX-b.left)/b.width*T),
      r=Math.floor((e.clientY-b.top)/b.height*rows);if(x<0||x>=T)return;select(d,x,false);
      const name=r<2?["role × trained","flagged"][r]:(r===2?"emb":"L"+(r-3));
      let v="";if(r>=2){const n=h.at(r-2,x);v=r>2&&n>0&&n<Infinity?"≈ "+(n>=0.01?(+n.toPrecision(3)).toString():n.toExponential(2)):fmt(n);}
      show(d,x,e.clientX,e.clientY,name+(v?": ‖∂L/∂h‖ "+v:""));});
    c.addEventListener("mouseleave",()=>hide());
    c.addEventListener("click",e=>{const s=d.querySelector(".strip>span.cur");if(s)s.scrollIntoView({block:"nearest"});});}
  function describe(d,i){const s=d.querySelectorAll(".strip>span")[i],g=data(d);
    const lines=["position "+i+"   id "+s.dataset.id,"text     "+JSON.stringify(g.text[i]),
      "role     "+s.dataset.role+(s.hasAttribute("data-trained")?", trained":", not trained"),
      "label    "+fmt(g.label[i])+"   target "+fmt(g.target[i]),
      "weight   "+fmt(g.weight[i])+"   loss "+fmt(g.loss[i]),
      "‖∂L/∂logits‖    "+fmt(g.glog[i]),"‖∂L/∂embedding‖ "+fmt(g.gemb[i])];
    if(s.dataset.flag)lines.push("FLAGGED: "+s.dataset.flag);return lines.join("\n");}
  function show(d,i,x,y,extra){tip.textContent=describe(d,i)+(extra?"\n"+extra:"");tip.hidden=false;
    const w=tip.offsetWidth,h=tip.offsetHeight;
    tip.style.left=Math.max(4,Math.min(innerWidth-w-4,x+12))+"px";tip.style.top=(y+h+16>innerHeight?y-h-8:y+16)+"px";}
  function hide(){tip.hidden=true;}
  function select(d,i,scroll){root.querySelectorAll(".strip>span.cur").forEach(s=>s.classList.remove("cur"));
    const spans=d.querySelectorAll(".strip>span"),s=spans[i];if(!s)return;s.classList.add("cur");d._cur=i;
    const cur=d.querySelector(".cursor");if(cur){cur.hidden=false;cur.style.left=(100*(i+0.5)/spans.length)+"%";}
    if(scroll)s.scrollIntoView({block:"nearest"});return s;}
  function fill(d){const t=d.querySelector("script.gs-strip");if(!t)return;d.querySelector(".strip").innerHTML=t.textContent;t.remove();}
  function opened(d){if(!d.open)return;fill(d);shade(d);heat(d);}
  root.querySelectorAll("details.sample").forEach(d=>{d.addEventListener("toggle",()=>opened(d));opened(d);
    const strip=d.querySelector(".strip");
    strip.addEventListener("mouseover",e=>{const s=e.target.closest("span[data-pos]");if(!s)return;
      const i=+s.dataset.pos;select(d,i,false);const b=s.getBoundingClientRect();show(d,i,b.left,b.bottom-10);});
    strip.addEventListener("mouseleave",hide);
    strip.addEventListener("click",e=>{const s=e.target.closest("span[data-pos]");if(s)d._cur=+s.dataset.pos;});
    strip.addEventListener("focus",()=>{const f=strip.querySelector("span[data-flag]"),i=d._cur??(f?+f.dataset.pos:0);
      const s=select(d,i,true);if(s){const b=s.getBoundingClientRect();show(d,i,b.left,b.bottom-10);}});
    strip.addEventListener("blur",hide);
    strip.addEventListener("keydown",e=>{const T=d.querySelectorAll(".strip>span").length;
      const step={ArrowRight:1,ArrowLeft:-1,Home:-T,End:T}[e.key];if(step===undefined)return;e.preventDefault();
      const i=Math.max(0,Math.min(T-1,(d._cur??0)+step)),s=select(d,i,true);
      if(s){const b=s.getBoundingClientRect();show(d,i,b.left,b.bottom-10);}});});
  if(controls){controls.addEventListener("change",e=>{if(e.target.name!=="shade")return;root.dataset.shade=e.target.value;
      root.querySelectorAll("details.sample[open]").forEach(opened);});
    controls.addEventListener("click",e=>{const a=e.target.dataset&&e.target.dataset.act;if(!a)return;
      root.querySelectorAll("details.sample").forEach(d=>{d.open=a==="open";opened(d);});});}
  function go(hash){if(!hash||hash.length<2)return;const m=decodeURIComponent(hash.slice(1)).match(/^(.*-s\d+)(?:-p(\d+))?$/);
    const d=m&&document.getElementById(m[1]);if(!d||!root.contains(d))return;d.open=true;opened(d);
    if(m[2]!==undefined){select(d,+m[2],true);}else{d.scrollIntoView();}}
  root.addEventListener("click",e=>{const a=e.target.closest("a[href^='#']");if(!a)return;e.preventDefault();
    history.replaceState(null,"",a.getAttribute("href"));go(a.getAttribute("href"));});
  go(location.hash);
}
document.querySelectorAll(".gs").forEach(init);
})();
"""
