"""The staff community board: posts and likes."""
from handlers import crud_operations, one
from middleware.tenancy import current_caller
from models import crud
from models.resources import COMMUNITY_POSTS

(list_community_posts, get_community_post, create_community_post, update_community_post,
 delete_community_post) = crud_operations(COMMUNITY_POSTS)


def like_community_post(id_: str):
    """Add one like, atomically (concurrent likes are never lost)."""
    likes = COMMUNITY_POSTS.table.c.likes
    return one(crud.change_row(COMMUNITY_POSTS, current_caller(), id_, {"likes": likes + 1}, action="like"))
