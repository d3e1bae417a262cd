"""One chat completion against an OpenAI-compatible server; exit 75 when it answers 429.

Made to run under ``collet-limiter run``, which puts the granted model in the environment
(``COLLET_LIMITER_MODEL``) and, with ``--cooldown-on-exit 75``, reports exit status 75 as the
provider refusing the call, so every other process lets the model cool down::

    collet-limiter run --model openai/gpt-4o --cooldown-on-exit 75 -- \\
        python examples/call_model.py --base-url http://127.0.0.1:PORT --prompt "item 7"

The model is ``--model``, else ``$COLLET_LIMITER_MODEL``; the server is ``--base-url`` (the root
URL ``fake_provider.py`` prints; ``/v1/chat/completions`` is appended), else
``$OPENAI_BASE_URL`` (which ends in ``/v1``). Prints the reply on stdout, or to ``--out FILE``.
Exit status: 0 answered, 75 refused for load (429, or 503/529 overloaded), 1 any other failure,
2 usage.

It speaks HTTP with the standard library rather than the openai SDK on purpose: a pipeline
starts one process per call, and importing the SDK costs about a second of CPU each time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Final

EX_TEMPFAIL: Final = 75  # sysexits.h: "try again later"; what --cooldown-on-exit listens for
REFUSED_FOR_LOAD: Final = (429, 503, 529)
TIMEOUT: Final = 60.0  # seconds for the whole call; the fake provider answers in well under one


def chat_url(args: argparse.Namespace) -> str:
    """Where to POST: the fake provider's root plus /v1/chat/completions, or $OPENAI_BASE_URL's."""
    if args.base_url:
        return f"{args.base_url.rstrip('/')}/v1/chat/completions"
    base = os.environ.get("OPENAI_BASE_URL")
    if not base:
        raise SystemExit("call_model: give --base-url or set OPENAI_BASE_URL")
    return f"{base.rstrip('/')}/chat/completions"


def main(argv: list[str] | None = None) -> int:
    """Make the call; the exit status says how it went."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("COLLET_LIMITER_MODEL"))
    parser.add_argument("--base-url", help="the fake provider's root URL")
    parser.add_argument("--prompt", default="hello")
    parser.add_argument("--out", help="write the reply to this file (default: stdout)")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model: pass --model or run under collet-limiter run")
    url = chat_url(args)
    if not url.startswith(("http://", "https://")):
        parser.error(f"not an http(s) URL: {url}")
    body = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}]}
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'fake')}",
    }
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310 - as above
            reply = json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            wait = error.headers.get("retry-after", "?")
            print(
                f"call_model: {args.model}: HTTP {error.code} (retry-after {wait})", file=sys.stderr
            )
        return EX_TEMPFAIL if error.code in REFUSED_FOR_LOAD else 1
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"call_model: {args.model}: {error}", file=sys.stderr)
        return 1
    text = reply["choices"][0]["message"]["content"]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            print(text, file=out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
