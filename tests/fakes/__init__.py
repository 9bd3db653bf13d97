"""In-process fakes of partner APIs, speaking their real wire formats."""

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class _Pumping(Resource):
    isLeaf = True

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.stub: StubTreq | None = None

    def render(self, request):
        result = self.inner.render(request)
        if result is NOT_DONE_YET and not request.finished:  # answered later: pump once written
            request.notifyFinish().addCallbacks(
                lambda _: reactor.callLater(0, self.stub.flush), lambda _: None
            )
        return result


def in_memory_client(resource) -> StubTreq:
    """
    A treq client wired to ``resource`` in memory (no sockets) that needs no
    manual ``flush()``: an answer written later (an async route) is delivered
    as soon as it is written.  The one StubTreq helper of the suite.
    """
    pumping = _Pumping(resource)
    stub = StubTreq(pumping)
    pumping.stub = stub
    return stub
