// rexd web UI: live refresh. Elements marked data-live are re-fetched every two seconds
// and swapped in place; without JavaScript the pages are complete as served.
(function () {
  const live = document.querySelectorAll('[data-live]');
  if (live.length === 0) return;
  async function refresh() {
    try {
      const response = await fetch(location.href, { credentials: 'same-origin' });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), 'text/html');
      for (const element of document.querySelectorAll('[data-live]')) {
        const fresh = page.getElementById(element.id);
        if (fresh) element.replaceWith(fresh);
      }
    } catch (e) { /* the server may be restarting; try again next tick */ }
  }
  setInterval(refresh, 2000);
})();
