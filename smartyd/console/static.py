"""The console's one stylesheet (no build step, no inline styles: the CSP allows none)."""

CONSOLE_CSS = b"""
body { font-family: system-ui, sans-serif; margin: 0; color: #1d2430; background: #f5f6f8; }
header { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; padding: .6em 1.2em;
         background: #1d2f4f; color: #fff; }
header a { color: #dfe8ff; margin-right: .8em; }
header .brand { margin-right: 1em; }
header form { display: inline-flex; gap: .3em; margin: 0; }
header .quick input { width: 22em; }
#whoami { margin-left: auto; }
main { padding: 1em 1.5em; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
section { background: #fff; padding: .6em 1em; margin-bottom: 1em; border-radius: 4px; }
table { border-collapse: collapse; width: 100%; font-size: .92em; }
th, td { text-align: left; padding: .3em .5em; border-bottom: 1px solid #e2e5ea;
         vertical-align: top; }
dl { display: grid; grid-template-columns: 12em auto; gap: .2em 1em; margin: 0; }
dt { color: #5a6270; } dd { margin: 0; }
#balance { font-weight: bold; }
form label { display: block; margin: .4em 0; }
form label input, form label select { margin-left: .4em; }
form label input[type=checkbox] { margin: 0 .4em 0 0; }
form.inline, form.filters, #money { display: flex; flex-wrap: wrap; gap: .4em;
                                    align-items: center; }
form.inline label, form.filters label, #money label { margin: 0; }
small { color: #6b7280; }
.message { background: #fde8e8; border: 1px solid #f5b5b5; padding: .5em .8em; }
.notice { background: #e6f6ea; border: 1px solid #a9dcb6; padding: .5em .8em; }
#login { max-width: 22em; background: #fff; padding: 1em; border-radius: 4px; }
"""
