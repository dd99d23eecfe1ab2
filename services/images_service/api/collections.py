"""`/api/images/favourites/*` and `/api/images/boards*`: the caller's starred images and named
boards (per API key; one shared set without keys). Listing them is `GET /api/images/latest` with
`favourite=true` or `board=NAME`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from services.contracts import ErrorBody

from ..collections import MAX_BOARD_ITEMS, MAX_BOARDS, Collections, validate_board_name
from ..gallery import GalleryQuery, parse_moment
from ..storage.keys import validate_image_key
from .deps import CallerDep, JsonBody, SettingsDep

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 415, 503)}

router = APIRouter(prefix="/api/images", tags=["collections"], responses=ERRORS)  # type: ignore[arg-type]


class BoardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    """Checked for its characters by the service, which says what is allowed."""


class BoardView(BaseModel):
    name: str
    count: int
    """Images on the board."""


class BoardsView(BaseModel):
    boards: list[BoardView]
    max_boards: int = MAX_BOARDS
    max_items: int = MAX_BOARD_ITEMS


async def collections_of(request: Request) -> Collections:
    state = request.app.state
    return Collections(state.gallery.redis, state.gallery.prefix, state.gallery, state.ownership)


CollectionsDep = Annotated[Collections, Depends(collections_of)]

MAX_QUERY_CHARS = 200
"""Longest text filter (`q`, `model`, `engine`, `job_id`) a listing takes."""

MAX_SIDE = 100_000

NO_CONTENT = {"status_code": 204, "response_class": Response}


@router.put("/favourites/{key:path}", **NO_CONTENT)  # type: ignore[arg-type]
def favourite(key: str, collections: CollectionsDep, caller: CallerDep, settings: SettingsDep) -> Response:
    """Star an image the caller may see (idempotent)."""
    collections.favourite(caller, validate_image_key(key, settings.s3_prefix))
    return Response(status_code=204)


@router.delete("/favourites/{key:path}", **NO_CONTENT)  # type: ignore[arg-type]
def unfavourite(key: str, collections: CollectionsDep, caller: CallerDep, settings: SettingsDep) -> Response:
    """Unstar an image (idempotent)."""
    collections.unfavourite(caller, validate_image_key(key, settings.s3_prefix))
    return Response(status_code=204)


def boards_view(collections: Collections, caller: CallerDep) -> BoardsView:
    return BoardsView(boards=[BoardView(name=b.name, count=b.count) for b in collections.boards(caller)])


@router.get("/boards", response_model=BoardsView)
def boards(collections: CollectionsDep, caller: CallerDep) -> BoardsView:
    """The caller's boards by name, with how many images each holds."""
    return boards_view(collections, caller)


@router.post("/boards", status_code=201, response_model=BoardsView, dependencies=[JsonBody])
def create_board(
    body: BoardRequest, response: Response, collections: CollectionsDep, caller: CallerDep
) -> BoardsView:
    """Create a board (201); one of that name already there answers 200 and changes nothing.
    Answers the caller's boards."""
    if not collections.create_board(caller, body.name):
        response.status_code = 200
    return boards_view(collections, caller)


@router.delete("/boards/{name}", **NO_CONTENT)  # type: ignore[arg-type]
def delete_board(name: str, collections: CollectionsDep, caller: CallerDep) -> Response:
    """Delete a board; its images stay in the gallery."""
    collections.delete_board(caller, name)
    return Response(status_code=204)


@router.put("/boards/{name}/items/{key:path}", **NO_CONTENT)  # type: ignore[arg-type]
def add_to_board(
    name: str, key: str, collections: CollectionsDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    """Put an image the caller may see on one of its boards (idempotent)."""
    collections.add_to_board(caller, name, validate_image_key(key, settings.s3_prefix))
    return Response(status_code=204)


@router.delete("/boards/{name}/items/{key:path}", **NO_CONTENT)  # type: ignore[arg-type]
def remove_from_board(
    name: str, key: str, collections: CollectionsDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    """Take an image off a board (idempotent)."""
    collections.remove_from_board(caller, name, validate_image_key(key, settings.s3_prefix))
    return Response(status_code=204)


# --- the filters of `GET /api/images/latest` ---------------------------------------------------------
@dataclass(frozen=True)
class FindFilters:
    """A listing's filters, parsed: the index query, the collection to walk and the order."""

    query: GalleryQuery
    favourite: bool = False
    board: str | None = None
    oldest_first: bool = False

    @property
    def is_plain(self) -> bool:
        """No filter and the usual order: `latest` takes its fast path."""
        return self == FindFilters(GalleryQuery())


async def find_filters(
    q: Annotated[str | None, Query(min_length=1, max_length=MAX_QUERY_CHARS)] = None,
    model: Annotated[str | None, Query(min_length=1, max_length=MAX_QUERY_CHARS)] = None,
    engine: Annotated[str | None, Query(min_length=1, max_length=MAX_QUERY_CHARS)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    min_width: Annotated[int | None, Query(ge=1, le=MAX_SIDE)] = None,
    min_height: Annotated[int | None, Query(ge=1, le=MAX_SIDE)] = None,
    size: Annotated[str | None, Query(pattern=r"^[1-9]\d{0,4}x[1-9]\d{0,4}$")] = None,
    favourite: Annotated[bool, Query()] = False,
    board: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    job_id: Annotated[str | None, Query(min_length=1, max_length=MAX_QUERY_CHARS)] = None,
    sort: Annotated[Literal["newest", "oldest"], Query()] = "newest",
) -> FindFilters:
    """`q` a case-insensitive substring of the prompt; `model`, `engine`, `job_id` exact; `since`,
    `until` ISO dates or date-times (a bare `until` date includes that day); `size=WxH` exact,
    `min_width`/`min_height` lower bounds; `favourite=true` the caller's starred; `board` one of the
    caller's boards; `sort=oldest` walks the other way (pass the same sort with its cursor)."""
    width, height = (int(side) for side in size.split("x")) if size else (None, None)
    query = GalleryQuery(
        text=q,
        model=model,
        engine=engine,
        since=parse_moment(since, "since") if since else None,
        until=parse_moment(until, "until", is_end=True) if until else None,
        width=width,
        height=height,
        min_width=min_width,
        min_height=min_height,
        job_id=job_id,
    )
    if board is not None:
        validate_board_name(board)
    return FindFilters(query, favourite=favourite, board=board, oldest_first=sort == "oldest")


FindDep = Annotated[FindFilters, Depends(find_filters)]
