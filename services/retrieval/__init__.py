"""retrieval: BM25 search over local corpora, the search tool agent environments call."""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="retrieval",
                      app="services.retrieval.app:create_app",
                      summary="BM25 search over project corpora for agent environments",
                      models="services.retrieval.models")
